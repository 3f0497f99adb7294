"""The node-local model cache: weights fetched once per node, complete or not at all, within a budget."""
