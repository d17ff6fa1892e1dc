from mmdeploy.cli.app import main

main()
