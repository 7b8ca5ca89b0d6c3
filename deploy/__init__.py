"""Running Strata: the local stack (`strata up`), docker-compose and Kubernetes manifests."""
