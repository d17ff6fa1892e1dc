from mmdeploy.cli import main

main()
