"""The one name the supervisor and its workers share: the environment variable marking a worker."""

WORKER_ENV = "OKM_WORKER"  # "INDEX:PORT:RESTARTED", set only in worker processes
