"""Record: declared like a dataclass, without the dataclasses module.

`lamina run` spent a quarter of its start-up on dataclasses: importing the module (inspect,
ast, dis...) and generating each class's methods with exec, about 0.7 ms a class on our
machines, 25 ms for the classes a start needs. A Record subclass declares its fields the
same way (annotations, defaults, `field(default_factory=...)`, `frozen=True` as a class
keyword), type checkers read it as a dataclass (PEP 681 dataclass_transform), and the
methods are shared ones that read the field list instead of generated code:
__init__ (positional or keyword), __eq__, __repr__, and for frozen records __hash__ and
no assignment.
"""

from __future__ import annotations

from collections.abc import Callable

TYPE_CHECKING = False  # typing costs milliseconds at every start; only mypy needs it
if TYPE_CHECKING:
    from typing import Any, ClassVar, TypeVar, dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**_options: object) -> Callable[[type], type]:
        return lambda cls: cls


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """A field whose default is made anew for each record (a list, a dict...)."""
    return _Factory(default_factory)  # type: ignore[return-value]  # read by Record only


_MISSING = object()


@dataclass_transform(field_specifiers=(field,))
class Record:
    """Base of lamina's value classes; see the module's docstring."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}
    _frozen: ClassVar[bool] = False

    def __init_subclass__(cls, frozen: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = [
            name
            for name, annotation in cls.__dict__.get("__annotations__", {}).items()  # noqa: RUF063 (inspect: too slow to import)
            if not str(annotation).startswith(("ClassVar", "typing.ClassVar"))
        ]
        defaults = dict(cls._defaults)
        for name in own:
            value = cls.__dict__.get(name, _MISSING)
            if value is not _MISSING:
                defaults[name] = value
                if isinstance(value, _Factory):
                    delattr(cls, name)  # instances always set it
            elif defaults:
                raise TypeError(f"{cls.__name__}.{name}: a field without default after one with")
        cls._fields = (*cls._fields, *own)
        cls._defaults = defaults
        cls._frozen = frozen or cls._frozen
        if not cls._frozen:
            cls.__hash__ = None  # type: ignore[assignment]  # mutable: unhashable, as dataclasses

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} arguments")
        values = dict(zip(fields, args, strict=False))
        for name, value in kwargs.items():
            if name in values or name not in fields:
                raise TypeError(f"{type(self).__name__}() got an unexpected or repeated {name!r}")
            values[name] = value
        assign = object.__setattr__
        defaults = self._defaults
        for name in fields:
            value = values.get(name, _MISSING)
            if value is _MISSING:
                value = defaults.get(name, _MISSING)
                if value is _MISSING:
                    raise TypeError(f"{type(self).__name__}() is missing {name!r}")
                if isinstance(value, _Factory):
                    value = value.make()
            assign(self, name, value)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return cls._fields

    def values(self) -> dict[str, Any]:
        """The fields and their values, in declaration order."""
        return {name: getattr(self, name) for name in self._fields}

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._fields)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self._fields))

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__name__}({shown})"

    def __setattr__(self, name: str, value: object) -> None:
        if self._frozen:
            raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if self._frozen:
            raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")
        object.__delattr__(self, name)
