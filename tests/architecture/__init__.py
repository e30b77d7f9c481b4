"""The shape of the tree: import contracts, the architecture map, the Helm chart."""
