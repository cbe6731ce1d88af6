from ecr_pipelines.dev.standins.server import main

main()
