from ecr_pipelines.standins.server import main

main()
