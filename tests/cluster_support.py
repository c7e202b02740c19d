"""The local Redis Cluster of dynaseal.local_cluster, under the name the tests import."""

from dynaseal.local_cluster import LocalCluster, cluster_ports, start_cluster

__all__ = ["LocalCluster", "cluster_ports", "start_cluster"]
