"""The Ray executor: steps run in tagentd workers hosted by Ray actors on a cluster (docs/scale-out.md).

- host.py: `WorkerHost`, the actor: starts one tagentd worker process next to it and reports how it ended;
- actors.py: `ActorProcess` and `ActorStarter`, a worker's actor as the pool sees a worker process;
- cluster.py: joining the cluster, reclaiming a previous daemon's actors, and what the cluster has;
- executor.py: `RayExecutor`, the `Executor` (tagentd.executor.interface) built on them.

Only the daemon started with `--executor ray` imports this package (and so Ray).
"""
