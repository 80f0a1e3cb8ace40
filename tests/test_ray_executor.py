"""`--executor ray`: the same pipelines, their steps in workers hosted by Ray actors on a multi-node cluster.

One Ray cluster per module (ray.cluster_utils: a head with no CPUs and two worker nodes with distinct custom
resources, all on 127.0.0.1), owned by the test process, so a daemon under test can be killed with kill -9 and
the cluster survives; each test starts its own daemon connected to it as a Ray driver. The test process is a Ray
driver too, to list the daemon's named actors. Nothing sleeps to wait: tests wait on runs, on the daemon's answers
or on files the steps write, with deadlines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, DaemonProcess, pid_alive, wait_until, write_pipeline
from tcp_recorder import TcpRecorder

pytestmark = [pytest.mark.timeout(150), pytest.mark.xdist_group("ray")]

FAST_HEALTH_CHECKS = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                      "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}
STORE = 80 * 2**20  # the object store's minimum: the steps' data goes over tagentd's socket, not Ray's store


#: Read by Ray when it is imported (here, and in each daemon under test, which inherits them): every Ray socket on
#: 127.0.0.1, no usage stats, and never a cluster named by the environment of the machine running the tests.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": None}


class RayCluster:
    """The module's cluster: its address and the node ids of the node with `node_a` and the one with `custom_x`.

    Ray is imported here, not at the module's import: the suite's other workers (pytest-xdist) collect this
    module too, and need not pay for Ray."""

    def __init__(self) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self.ray = ray
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "no_monitor": True, "include_log_monitor": False,
            "object_store_memory": STORE, "_system_config": FAST_HEALTH_CHECKS})
        self.node_a = self.cluster.add_node(num_cpus=4, object_store_memory=STORE, resources={"node_a": 100})
        self.node_x = self.cluster.add_node(num_cpus=4, object_store_memory=STORE, resources={"custom_x": 100})
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, log_to_driver=False, configure_logging=False)

    @property
    def address(self) -> str:
        return self.cluster.address

    def node_alive(self, node_id: str) -> bool:
        """Whether the cluster's GCS still counts node `node_id` alive (a killed node is found by missed health checks)."""
        return any(n["NodeID"] == node_id and n["Alive"] for n in self.ray.nodes())

    def named_actors(self, namespace: str) -> set[str]:
        named = self.ray.util.list_named_actors(all_namespaces=True)
        return {a["name"] for a in named if a["namespace"] == namespace}

    def leave_actor(self, namespace: str, name: str) -> None:
        """Make a detached actor in `namespace`, as a daemon that crashed before Ray reaped its actors left it."""

        class Leftover:  # defined here, so that Ray ships it by value (the nodes cannot import this module)
            def ping(self) -> str:
                return "pong"

        actor = self.ray.remote(Leftover).options(name=name, namespace=namespace, lifetime="detached", num_cpus=0)
        handle = actor.remote()
        assert self.ray.get(handle.ping.remote(), timeout=60) == "pong"

    def shutdown(self) -> None:
        self.ray.shutdown()
        self.cluster.shutdown()


def set_env(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    before = {name: os.environ.get(name) for name in RAY_ENV}
    set_env(RAY_ENV)
    try:
        made = RayCluster()
        try:
            yield made
        finally:
            made.shutdown()
    finally:
        set_env(before)


@pytest.fixture
def ray_daemon(make_daemon: Callable[..., DaemonProcess], cluster: RayCluster) -> Callable[..., DaemonProcess]:
    """Start daemons whose steps run on the module's cluster (`--executor ray`), 2 actors each, their workers
    joining over the daemon's CURVE endpoint (`worker_listen`), as they would from another machine."""

    def start(root: Path | None = None, **settings: Any) -> DaemonProcess:
        daemon = make_daemon(workers=2, extra=["--executor", "ray", "--ray-address", cluster.address], root=root)
        for key, value in {"worker_listen": "tcp://127.0.0.1:0", **settings}.items():
            daemon.env[f"TAGENTD_{key.upper()}"] = str(value)
        return daemon.start(timeout=60, workers_timeout=60)

    return start


def status(daemon: DaemonProcess) -> dict[str, Any]:
    done = daemon.admin("status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def completed(client: Any, run_id: str, timeout: float = 60) -> Any:
    result = client.wait(run_id, timeout=timeout)
    assert result.status == "completed", result.error
    return result


def completed_or_explained(daemon: DaemonProcess, client: Any, run_id: str, timeout: float = 60) -> Any:
    """`completed`, or a failure that shows what the daemon saw: the run's steps, its workers and its log."""
    from tagent_client.errors import TagentError

    try:
        return completed(client, run_id, timeout)
    except (AssertionError, TagentError) as exc:
        steps = {name: (s.status, s.attempts, s.error) for name, s in client.status(run_id).steps.items()}
        raise AssertionError(f"{exc!r}\nsteps: {steps}\nworkers: {status(daemon)['workers']}\n"
                             f"log:\n{daemon.log()}") from exc


FAN_OUT = """
    from tagent_client import ExecutionMode, Pipeline

    fan = Pipeline("fan")

    @fan.task
    def items():
        return list(range(200))

    @fan.task(execution_mode=ExecutionMode.PARALLEL_MERGE, over="items", depends_on=["items"])
    async def each(item):
        return item * 2

    @fan.task(depends_on=["each"], final=True)
    def total(each):
        return sum(each)
"""


def test_the_research_example_and_a_1_200_1_fan_out_run_unchanged(ray_daemon: Any, cluster: RayCluster,
                                                                   tmp_path: Path) -> None:
    # Given a daemon whose workers are actors on the cluster
    daemon = ray_daemon()
    fan = write_pipeline(tmp_path, "fan.py", FAN_OUT)
    with daemon.client(timeout=30) as client:
        # When the research example (on the `test` model) and a 1 -> 200 -> 1 fan-out are submitted as they are
        research = client.submit(str(REPO / "pipelines/examples/research.py"), params={"company": "Acme"})
        fanned = client.submit(str(fan))
        # Then both complete, with the same results as with local workers
        report = completed(client, research.id)
        assert set(report.step_outputs) == {"web_search", "reputation", "social", "score", "final_report"}
        assert completed(client, fanned.id).final_output == sum(i * 2 for i in range(200))
    # And `tagentd status` shows the cluster: its nodes, their resources, and the daemon's actors on them
    info = status(daemon)["cluster"]
    assert info["kind"] == "ray" and info["connected"] is True
    nodes = {n["node_id"]: n for n in info["nodes"]}
    assert {cluster.node_a.node_id, cluster.node_x.node_id} <= set(nodes)
    assert nodes[cluster.node_x.node_id]["resources"]["custom_x"] == 100
    assert sum(n["workers"] for n in info["nodes"]) == 2
    assert len(cluster.named_actors(info["namespace"])) == 2
    shown = daemon.admin("status").stdout
    assert f"ray at {cluster.address}" in shown and cluster.node_x.node_id[:12] in shown and "custom_x=100" in shown


PLACED = """
    import os
    from tagent_client import Pipeline

    placed = Pipeline("placed")

    def node():
        return os.environ["TAGENTD_RAY_NODE_ID"]

    placed.step("on_x", fn=node, resources={"custom_x": 1})
    placed.step("on_a", fn=node, resources={"node_a": 1, "num_cpus": 0.5})
    placed.step("after", fn=node, depends_on=["on_x", "on_a"], resources={"custom_x": 1}, final=True)
    placed.step("env", fn=lambda: os.environ.get("FROM_RUNTIME_ENV"))

    nowhere = Pipeline("nowhere")
    nowhere.step("gpu", fn=node, resources={"num_gpus": 1}, final=True)
"""


def test_steps_with_resources_land_on_the_node_that_has_them(ray_daemon: Any, cluster: RayCluster,
                                                             tmp_path: Path) -> None:
    # Given a cluster where only one node has `custom_x` and only another has `node_a`, and a daemon whose
    # tagentd.toml gives Ray a runtime_env for the workers
    daemon = ray_daemon(ray_runtime_env=json.dumps({"env_vars": {"FROM_RUNTIME_ENV": "yes"}}))
    pipes = write_pipeline(tmp_path, "placed.py", PLACED)
    with daemon.client(timeout=30) as client:
        # When steps ask for those resources
        result = completed(client, client.submit(f"{pipes}:placed").id)
        # Then each ran on the node that has what it asked for
        assert result.step_outputs["on_x"] == cluster.node_x.node_id
        assert result.step_outputs["on_a"] == cluster.node_a.node_id
        assert result.step_outputs["after"] == cluster.node_x.node_id
        assert result.step_outputs["env"] == "yes"  # the runtime_env reached the workers
        # And a step asking for what no node has fails at once, saying so, instead of waiting forever
        failed = client.wait(client.submit(f"{pipes}:nowhere").id, timeout=30)
        assert failed.status == "failed"
        error = failed.step_metadata["gpu"]["error"]
        assert "{'num_gpus': 1" in error and "no node of the Ray cluster" in error
    # And once no step needs them, the actors placed for those resources are stopped (their resources freed)
    namespace = status(daemon)["cluster"]["namespace"]
    wait_until(lambda: len(cluster.named_actors(namespace)) == 2, 60, what="the idle resource lanes to stop")
    assert {w["id"] for w in status(daemon)["workers"]} == {1, 2}


BROKER = """
    import os
    from tagent_client import Pipeline

    writer = Pipeline("writer")

    @writer.task(final=True, resources={"node_a": 1})
    async def write(ctx):
        entry = await ctx.space("notes").put("acme", {"score": 4})
        await ctx.send("reader", {"company": "Acme"})
        await ctx.memory.save("written", entry.version)
        return {"node": os.environ["TAGENTD_RAY_NODE_ID"], "version": entry.version}

    reader = Pipeline("reader")

    @reader.task(final=True, resources={"custom_x": 1})
    async def read(ctx):
        message = await ctx.receive(timeout=30)
        entry = await ctx.space("notes").get("acme")
        won = await ctx.space("notes").cas("acme", {"score": 5}, expected_version=entry.version)
        lost = await ctx.space("notes").cas("acme", {"score": 6}, expected_version=entry.version)
        ctx.log.info("read %s", message.payload["company"])
        return {"node": os.environ["TAGENTD_RAY_NODE_ID"], "got": message.payload, "won": won, "lost": lost}
"""


def test_steps_on_different_nodes_message_each_other_and_share_a_space(ray_daemon: Any, cluster: RayCluster,
                                                                        tmp_path: Path) -> None:
    # Given a reader waiting on the node with `custom_x`, the actors' workers joining through a recording proxy
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxy = TcpRecorder(("127.0.0.1", port))
    try:
        daemon = ray_daemon(worker_listen=f"tcp://127.0.0.1:{port}", worker_advertise=f"tcp://127.0.0.1:{proxy.port}")
        exchange_across_nodes(daemon, cluster, tmp_path)
        # And all of it crossed the CURVE link encrypted: the payload, the space and the log line are not in it
        capture = proxy.captured()
        assert proxy.connections >= 2 and len(capture) > 1000
        assert b"Acme" not in capture and b"notes" not in capture and b"read " not in capture
    finally:
        proxy.close()


def exchange_across_nodes(daemon: DaemonProcess, cluster: RayCluster, tmp_path: Path) -> None:
    pipes = write_pipeline(tmp_path, "broker.py", BROKER)
    with daemon.client(timeout=30) as client:
        reader = client.submit(f"{pipes}:reader")
        # When a writer on the node with `node_a` writes a space key and sends it a message
        wrote = completed(client, client.submit(f"{pipes}:writer").id).final_output
        got = completed(client, reader.id).final_output
        # Then the reader got the message, won one compare-and-set and lost the stale one, on its own node
        assert wrote["node"] == cluster.node_a.node_id and got["node"] == cluster.node_x.node_id
        assert got["got"] == {"company": "Acme"} and got["won"] is True and got["lost"] is False
        assert client.space("notes").get("acme").value == {"score": 5}
        # And its log line reached the daemon
        assert any("read Acme" in line.message for line in client.logs(reader.id))


SLOW = """
    import os, pathlib, time
    from tagent_client import Pipeline

    DIR = pathlib.Path({dir!r})
    slow = Pipeline("slow")

    @slow.task
    def first():
        with open(DIR / "first.count", "a") as f:
            f.write("x")
        return "first"

    @slow.task(depends_on=["first"], final=True)
    def hold(ctx):
        (DIR / f"attempt-{{ctx.attempt}}").write_text(json.dumps({{"actor_pid": os.getppid(), "pid": os.getpid(),
                                                               "node": os.environ["TAGENTD_RAY_NODE_ID"]}}))
        deadline = time.monotonic() + 90
        while not (DIR / "release").exists() and ctx.attempt == 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # ok-sleep: the step's own work, until the test releases it
        return ctx.attempt

    import json
"""


def slow_pipeline(tmp_path: Path) -> Path:
    return write_pipeline(tmp_path, "slow.py", SLOW.format(dir=str(tmp_path)))


def attempt_started(tmp_path: Path, attempt: int) -> dict[str, Any]:
    marker = tmp_path / f"attempt-{attempt}"
    wait_until(lambda: marker.exists() and marker.read_text(), 60, what=f"attempt {attempt} to start")
    return json.loads(marker.read_text())


def test_an_actor_killed_mid_step_is_replaced_and_the_step_runs_again(ray_daemon: Any, tmp_path: Path) -> None:
    # Given a run whose second step is running in an actor, its first step completed
    daemon = ray_daemon()
    pipe = slow_pipeline(tmp_path)
    with daemon.client(timeout=30) as client:
        run = client.submit(str(pipe))
        first = attempt_started(tmp_path, 1)
        # When that actor's process is killed (kill -9)
        os.kill(first["actor_pid"], signal.SIGKILL)
        # Then the attempt is reported lost, runs again in another actor, and the run completes
        result = completed(client, run.id)
        assert result.final_output == 2
        assert attempt_started(tmp_path, 2)["actor_pid"] != first["actor_pid"]
        # And the completed first step did not run again; the worker the actor hosted is gone with it
        assert (tmp_path / "first.count").read_text() == "x"
        wait_until(lambda: not pid_alive(first["pid"]), 10, what="the killed actor's worker to end")
    # And the daemon replaced the actor: it has 2 ready workers again
    wait_until(lambda: [w["state"] for w in status(daemon)["workers"]] == ["ready", "ready"], 60,
               what="a replacement actor")
    assert status(daemon)["stats"]["workers_lost"] == 1


WAITING = """
    import asyncio, json, os, pathlib
    from tagent_client import Pipeline

    waiting = Pipeline("waiting")

    @waiting.task(final=True)
    async def wait(ctx):
        pathlib.Path({dir!r}, f"attempt-{{ctx.attempt}}").write_text(json.dumps({{"actor_pid": os.getppid(),
                                                                               "pid": os.getpid()}}))
        await asyncio.sleep(90)  # ok-sleep: the step's own work, until it is cancelled
"""


def test_a_cancelled_run_stops_its_step_in_an_actor_which_stays(ray_daemon: Any, tmp_path: Path) -> None:
    # Given a run whose (async) step is running in an actor
    daemon = ray_daemon()
    pipe = write_pipeline(tmp_path, "waiting.py", WAITING.format(dir=str(tmp_path)))
    with daemon.client(timeout=30) as client:
        run = client.submit(str(pipe))
        first = attempt_started(tmp_path, 1)
        # When the run is cancelled
        client.cancel(run.id)
        # Then it ends cancelled, and the actor and its worker go on (a cancel is not a crash)
        assert client.wait(run.id, timeout=30).status == "cancelled"
    assert pid_alive(first["pid"]) and pid_alive(first["actor_pid"])
    assert {w["id"] for w in status(daemon)["workers"]} == {1, 2}
    assert status(daemon)["stats"].get("workers_lost", 0) == 0


def test_a_node_lost_mid_step_loses_no_completed_step(ray_daemon: Any, cluster: RayCluster, tmp_path: Path) -> None:
    # Given a node with a resource `flaky` and a run whose step asking for it runs there
    doomed = cluster.cluster.add_node(num_cpus=2, object_store_memory=STORE, resources={"flaky": 10})
    cluster.cluster.wait_for_nodes()
    daemon = ray_daemon()
    pipe = write_pipeline(tmp_path, "flaky.py", SLOW.format(dir=str(tmp_path)).replace(
        '@slow.task(depends_on=["first"], final=True)',
        '@slow.task(depends_on=["first"], final=True, resources={"flaky": 1})'))
    with daemon.client(timeout=30) as client:
        run = client.submit(str(pipe))
        assert attempt_started(tmp_path, 1)["node"] == doomed.node_id
        # When another node with `flaky` joins and the first one dies (its raylet and every process on it)
        spare = cluster.cluster.add_node(num_cpus=2, object_store_memory=STORE, resources={"flaky": 10})
        cluster.cluster.wait_for_nodes()
        cluster.cluster.remove_node(doomed, allow_graceful=False)
        # Then the step runs again on the node that is left, and the run completes without re-running `first`
        result = completed(client, run.id, timeout=90)
        assert result.final_output == 2 and attempt_started(tmp_path, 2)["node"] == spare.node_id
        assert (tmp_path / "first.count").read_text() == "x"
    daemon.stop()
    cluster.cluster.remove_node(spare, allow_graceful=False)
    # (and the cluster has marked it dead before the next test places an actor: one placed on it meanwhile dies)
    wait_until(lambda: not cluster.node_alive(spare.node_id), 30, what="the cluster to mark the removed node dead")


def test_kill_9_of_the_daemon_leaks_no_actor_and_its_runs_resume(ray_daemon: Any, cluster: RayCluster,
                                                                tmp_path: Path) -> None:
    # Given a daemon with a step in flight in one of its actors, the step before it reported completed (so on
    # disk: the in-flight step may start while its dependency's completion is still being committed, and a kill
    # -9 then would run both again, the in-flight one as attempt 1 again, docs/checkpoints.md)
    root = tmp_path / "d"
    root.mkdir(mode=0o700)
    daemon = ray_daemon(root=root)
    namespace = status(daemon)["cluster"]["namespace"]
    before = cluster.named_actors(namespace)
    pipe = slow_pipeline(tmp_path)
    with daemon.client(timeout=30) as client:
        run_id = client.submit(str(pipe)).id
        first = attempt_started(tmp_path, 1)
        wait_until(lambda: client.status(run_id).steps["first"].status == "completed", 30,
                   what="the first step to be reported completed")
    # When the daemon is killed with kill -9
    daemon.kill9()
    # Then none of its actors (nor the workers they hosted) outlive it
    wait_until(lambda: not cluster.named_actors(namespace), 30, what="the dead daemon's actors to go")
    wait_until(lambda: not pid_alive(first["pid"]), 10, what="the dead daemon's workers to end")
    # And a restarted daemon kills any actor left in its namespace (here one Ray would not reap: detached),
    # has only actors of its own, and runs the interrupted step again to the end
    cluster.leave_actor(namespace, "dold-w9")
    again = ray_daemon(root=root)
    actors = cluster.named_actors(namespace)
    assert len(actors) == 2 and not actors & before and "dold-w9" not in actors
    with again.client(timeout=30) as client:
        assert completed_or_explained(again, client, run_id).final_output == 2
    assert (tmp_path / "first.count").read_text() == "x"


HUNG = """
    import time
    from tagent_client import Pipeline

    hung = Pipeline("hung")

    @hung.task(timeout=1, max_retries=0, final=True)
    def stuck():
        while True:
            time.sleep(0.05)  # ok-sleep: a sync step that ignores its timeout
"""


def test_a_step_past_its_timeout_has_only_its_actor_replaced(ray_daemon: Any, cluster: RayCluster,
                                                             tmp_path: Path) -> None:
    # Given a daemon with two actors (their workers on workers.sock: every node is this machine), and a sync step
    # that will not stop at its 1 s timeout
    daemon = ray_daemon(timeout_grace=1, worker_listen="")
    namespace = status(daemon)["cluster"]["namespace"]
    pipe = write_pipeline(tmp_path, "hung.py", HUNG)
    with daemon.client(timeout=30) as client:
        run = client.submit(str(pipe))
        # When it runs past its timeout (and the grace period)
        result = client.wait(run.id, timeout=60)
    # Then it fails with a timeout
    assert result.status == "failed" and "timed out" in (result.step_metadata["stuck"]["error"] or "")
    # And its actor alone was replaced: the other one is still there, and there are two again
    def replaced() -> set[int] | None:
        workers = status(daemon)["workers"]
        ids = {w["id"] for w in workers}
        done = ids != {1, 2} and len(workers) == 2 and all(w["state"] == "ready" for w in workers)
        return ids if done and len(cluster.named_actors(namespace)) == 2 else None

    assert len(wait_until(replaced, 60, what="a replacement actor") & {1, 2}) == 1


def test_the_dashboard_shows_the_cluster_its_nodes_and_where_steps_run(ray_daemon: Any, cluster: RayCluster,
                                                                       tmp_path: Path) -> None:
    """Given a Ray daemon with its dashboard and a step holding a slot on the node with `custom_x`, When the
    dashboard's daemon page is open in headless Chromium, Then its Cluster section shows the cluster's address, each
    node (alive) and the running step on its node."""
    from dashboard import login_url, web_info
    from test_web_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{CHROMIUM} is missing: apt-get install -y chromium")
    daemon = ray_daemon(web="true")
    held = write_pipeline(tmp_path, "held.py", """
        from tagent_client import Pipeline

        held = Pipeline("held")

        @held.task(resources={"custom_x": 1}, final=True)
        async def hold(ctx):
            return (await ctx.receive(timeout=100)).payload
    """)
    run_id = daemon.cli("submit", str(held)).stdout.strip()
    wait_until(lambda: any(n["steps"] for n in status(daemon)["cluster"]["nodes"]), timeout=60,
               what="the held step running on a node")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = chromium.new_context().new_page()
            page.set_default_timeout(20_000)
            page.goto(login_url(web_info(daemon)))
            page.goto(f"{web_info(daemon)['url']}#/daemon")
            card = page.locator("section.card", has=page.locator("h2", has_text="Cluster"))
            card.locator(f"text={cluster.address}").wait_for()
            rows = card.locator("tbody tr")
            wait_until(lambda: rows.count() == len(status(daemon)["cluster"]["nodes"]), timeout=20,
                       what="a row per node")
            busy = card.locator("tbody tr", has=page.locator(f"text={cluster.node_x.node_id[:12]}"))
            assert busy.locator("td").nth(5).inner_text() == "1"
            assert "alive" in busy.inner_text()
        finally:
            chromium.close()
    with daemon.client() as client:
        client.send("held", "done")
        completed(client, run_id)
