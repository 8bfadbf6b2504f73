"""The names the supervisor and its workers share: the worker marker and the reload answer."""

WORKER_ENV = "OKM_WORKER"  # "INDEX:PORT:RESTARTED", set only in worker processes
RELOAD_ANSWER = "X_OKM_RELOAD"  # sd_notify variable a worker adds to READY=1 after a reload: "ok" or "refused"
