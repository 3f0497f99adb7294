"""One module per external system: Kubernetes (kube), Prometheus, the engines' health APIs."""
