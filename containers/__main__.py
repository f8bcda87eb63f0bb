from containers.launch import main

main()
