"""The gateway: the stateless data plane. V2 inference routed to model replicas, experiments' traffic
split and mirror, pipelines executed as dataflow graphs, over REST, gRPC and Kafka."""
