"""The local Redis Cluster of dynaseal_launcher.local_cluster, under the name the tests import."""

from dynaseal_launcher.local_cluster import LocalCluster, cluster_ports, start_cluster

__all__ = ["LocalCluster", "cluster_ports", "start_cluster"]
