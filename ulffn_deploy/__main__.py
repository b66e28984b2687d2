from ulffn_deploy.cli import main

main()
