"""The cluster: both launcher configs against Ray's own schema, the storage rules, and a real
two-node Ray cluster on this machine running a submitted job with its workers on both nodes
and its record in an MLflow server.

The cluster here is not the session's in-process Ray (conftest's ray_session): it has its own
temp dir, its own ports on 127.0.0.1, its own auth token and no RAY_ADDRESS in common, and
both nodes are stopped (process groups, then anything left under its temp dir) even when
the test fails.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipelines.__main__ import main
from pipelines.core.storage import Storage, check_shared, filesystem_type

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's ray, mlflow and fastray
RUNTIME_EXCLUDES = {"data/", "cache/", "runs/", "mlruns*", ".venv*", "*.db", "mlartifacts/"}


# ------------------------------------------------------------------ the configs


def _validate(path: Path) -> dict:
    """What `ray up` checks first: Ray's shipped JSON schema (ray/autoscaler/ray-schema.json)
    and its own rules on node types, after filling in the provider's defaults."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, schema)  # the file as written
    validate_config(prepare_config(config))  # with the provider's defaults merged in, as `ray up` does
    return config


def test_aws_cluster_config_validates():
    config = _validate(ROOT / "cluster.yaml")
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0  # a CPU head that trains nothing
    gpu = [t for t in config["available_node_types"].values() if t.get("resources", {}).get("GPU", 0) > 1]
    assert gpu and gpu[0]["min_workers"] <= gpu[0]["max_workers"] <= config["max_workers"]
    commands = "\n".join(config["setup_commands"] + config["head_start_ray_commands"])
    assert "pip install" in commands and "mlflow server" in commands and "RAY_AUTH_MODE=token" in commands


def test_local_cluster_config_validates():
    config = _validate(ROOT / "cluster-local.yaml")
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    assert "mlflow server" in "\n".join(config["head_start_ray_commands"])


def test_runtime_env_excludes_large_folders_and_names_mlflow():
    env = yaml.safe_load((ROOT / "runtime_env.yaml").read_text())
    assert RUNTIME_EXCLUDES <= set(env["excludes"])
    assert "MLFLOW_TRACKING_URI" in env["env_vars"]


# ------------------------------------------------------------------ storage rules


MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw 0 0
10.0.0.5:/export /mnt/shared nfs4 rw,vers=4.1 0 0
s3fs /mnt/bucket fuse.s3fs rw 0 0
"""


def test_filesystem_type_takes_the_longest_mount():
    assert filesystem_type("/mnt/shared/fastray/runs", MOUNTS) == "nfs4"  # not there yet: its parent's
    assert filesystem_type("/mnt/bucket/x", MOUNTS) == "fuse.s3fs"
    assert filesystem_type("/mnt/sharedX", MOUNTS) == "ext4"
    assert filesystem_type("/tmp/a", MOUNTS) == "tmpfs"


def test_storage_layout():
    s = Storage.resolve("/mnt/shared/fastray")
    assert s.checkpoints() == "/mnt/shared/fastray/runs" and s.cache_dir(None) == Path("/mnt/shared/fastray/cache")
    assert s.artifacts() == "file:///mnt/shared/fastray/mlartifacts"
    u = Storage.resolve("s3://bucket/fastray/")
    assert u.checkpoints() == "s3://bucket/fastray/runs" and u.artifacts() == "s3://bucket/fastray/mlartifacts"
    assert u.cache_dir(None) is None and u.cache_dir(Path("/mnt/shared/c")) == Path("/mnt/shared/c")
    assert Storage.resolve(None).checkpoints() == str(Path("runs").absolute())  # the local default: ./runs


def test_new_experiments_keep_artifacts_on_the_storage(tmp_path, capsys):
    from pipelines.core import tracking

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    beside = tracking._client(uri).get_experiment(tracking.experiment_id(uri, "local"))
    assert beside.artifact_location == (tmp_path / "mlartifacts").as_uri()  # the default stays
    store = Storage.resolve(str(tmp_path / "store"))
    with tracking.artifact_storage(store.artifacts()):
        exp = tracking._client(uri).get_experiment(tracking.experiment_id(uri, "on-storage"))
        assert exp.artifact_location == (tmp_path / "store" / "mlartifacts").as_uri()
        tracking.experiment_id(uri, "local")  # made before: keeps its place, and says so
        assert "keeps the artifact location it was created with" in capsys.readouterr().err
        assert tracking._artifact_root("http://10.0.0.1:5000") is None  # a server decides


def test_several_hosts_refuse_a_local_path_and_take_a_shared_one(monkeypatch):
    monkeypatch.delenv("FASTRAY_SHARED_STORAGE", raising=False)
    two = {"10.0.0.1", "10.0.0.2"}
    shared = Storage.resolve("/mnt/shared/fastray")
    check_shared(shared, Path("/mnt/shared/fastray/cache"), "http://10.0.0.1:5000", two, mounts=MOUNTS)
    check_shared(Storage.resolve("/tmp/x"), Path("/tmp/x/cache"), "sqlite:////tmp/x/m.db", {"127.0.0.1"}, mounts=MOUNTS)
    with pytest.raises(ValueError, match=r"checkpoints /tmp/x/runs is on this machine's own disk \(tmpfs\), "
                                         r"but the cluster's nodes sit on 2 machines"):
        check_shared(Storage.resolve("/tmp/x"), Path("/tmp/x/cache"), "http://10.0.0.1:5000", two, mounts=MOUNTS)
    with pytest.raises(ValueError, match="the MLflow store /tmp/m.db .* run `mlflow server` on the head"):
        check_shared(shared, Path("/mnt/shared/fastray/cache"), "sqlite:////tmp/m.db", two, mounts=MOUNTS)
    with pytest.raises(ValueError, match="the preprocessing cache .* give --cache-dir on a shared one"):
        check_shared(Storage.resolve("s3://b/f"), Path("/tmp/cache"), "http://10.0.0.1:5000", two, mounts=MOUNTS)
    with pytest.raises(ValueError, match="the data folder /tmp/d is on this machine's own disk"):
        check_shared(shared, Path("/mnt/shared/fastray/cache"), "http://10.0.0.1:5000", two, data=Path("/tmp/d"),
                     mounts=MOUNTS)
    monkeypatch.setenv("FASTRAY_SHARED_STORAGE", "1")
    check_shared(Storage.resolve("/tmp/x"), Path("/tmp/x/cache"), "http://10.0.0.1:5000", two, mounts=MOUNTS)


def test_cli_refuses_a_node_local_storage_on_several_hosts(capsys, workdir, ray_session, monkeypatch):
    """The refusal as a user meets it: one line, exit 1, before any preprocessing or training."""
    from pipelines.core import storage

    monkeypatch.delenv("FASTRAY_SHARED_STORAGE", raising=False)
    monkeypatch.setattr(storage, "cluster_hosts", lambda: {"10.0.0.1", "10.0.0.2"})
    monkeypatch.setattr(storage, "is_shared_filesystem", lambda fstype: False)
    (workdir / "data").mkdir()  # refused before the data is read
    code = main(["run", "cifar10-darknet", "--data", str(workdir / "data"), "--config", "tiny",
                 "--storage", str(workdir / "store"), "--name", "refused"])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("fastray: error:")]
    assert code == 1 and len(lines) == 1 and "on this machine's own disk" in lines[0], err
    assert not (workdir / "store").exists() and not (workdir / "mlruns.db").exists()


def test_object_storage_uris_reach_ray_train_unchanged(cifar_small, workdir, ray_session, monkeypatch):
    """--storage s3://... : Ray Train gets the URI itself (not ./s3:/...), the run folder is
    ROOT/runs/NAME, and nothing lands under the current folder."""
    import ray

    from pipelines.core import engine, registry
    from pipelines.core.engine import fit
    from pipelines.core.storage import join_storage
    from preprocessing.cache import Cache

    assert Storage.resolve("s3://b/fastray/").checkpoints() == "s3://b/fastray/runs"
    assert join_storage("gs://b/runs", "x") == "gs://b/runs/x"
    assert Storage.resolve(None).checkpoints() == str(workdir / "runs")
    monkeypatch.setenv("FASTRAY_STORAGE", str(workdir / "store"))  # one meaning: the root of runs/, cache/ ...
    assert Storage.resolve(None).checkpoints() == str(workdir / "store" / "runs")
    monkeypatch.delenv("FASTRAY_STORAGE")
    seen = {}

    class Captured(Exception):
        pass

    class FakeTrainer:
        def __init__(self, fn, *, train_loop_config, run_config, **kw):
            seen.update(storage=run_config.storage_path, run_dir=ray.get(train_loop_config["spec"]).run_dir)

        def fit(self):
            raise Captured

    monkeypatch.setattr(engine, "_trainer", lambda num_workers, use_gpu: FakeTrainer)
    storage = Storage.resolve("s3://b/fastray").checkpoints()
    cfg = registry.get("cifar10-darknet").configs["tiny"]
    with pytest.raises(Captured):
        fit("cifar10-darknet", cfg, data_dir=cifar_small, cache=Cache(workdir / "c"), name="obj", storage=storage)
    assert seen == {"storage": "s3://b/fastray/runs", "run_dir": "s3://b/fastray/runs/obj"}
    assert not (workdir / "s3:").exists() and not (workdir / "runs").exists()


def test_bad_placement_env_is_one_line(capsys, workdir, monkeypatch):
    monkeypatch.setenv("FASTRAY_PLACEMENT", "diagonal")
    code = main(["run", "cifar10-darknet", "--data", str(workdir), "--config", "tiny"])
    assert code == 1 and "FASTRAY_PLACEMENT='diagonal': expected one of pack, spread" in capsys.readouterr().err


# ------------------------------------------------------------------ a real two-node cluster


def _free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 now (held together, so no two are the same)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode} before port {port} opened:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"port {port} did not open in {timeout:.0f}s:\n{log.read_text()[-3000:]}")


class LocalCluster:
    """A Ray head (2 CPUs) and one more node (1 CPU) on 127.0.0.1, started with `ray start
    --block` in their own process groups so that stopping them stops everything they started.
    Two 1-CPU training workers fit on the head alone: only a SPREAD placement puts one on each."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.temp_dir = Path(tempfile.mkdtemp(prefix="frc-", dir="/tmp"))  # short: Ray's socket paths
        self.token = secrets.token_hex(32)
        (self.gcs, self.dashboard, self.client, self.mlflow,
         *self.node_ports) = _free_ports(4 + 2 * 7)
        self.address = f"127.0.0.1:{self.gcs}"
        self.api = f"http://127.0.0.1:{self.dashboard}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        self.env = {
            **env,
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,  # this cluster's own token
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
            "FASTRAY_HEAD_IP": "127.0.0.1",  # what cluster.yaml exports on every node
        }
        self.procs: list[subprocess.Popen] = []

    def _node_args(self, i: int, cpus: int) -> list[str]:
        p = self.node_ports[7 * i: 7 * (i + 1)]
        return [
            "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--num-gpus", "0",
            "--object-store-memory", str(200 * 2**20), "--temp-dir", str(self.temp_dir),
            "--node-manager-port", str(p[0]), "--object-manager-port", str(p[1]),
            "--dashboard-agent-listen-port", str(p[2]), "--dashboard-agent-grpc-port", str(p[3]),
            "--runtime-env-agent-port", str(p[4]), "--metrics-export-port", str(p[5]),
            "--disable-usage-stats", "--block",
        ]

    def _spawn(self, name: str, argv: list[str]) -> tuple[subprocess.Popen, Path]:
        log = self.tmp / f"{name}.log"
        env = {**self.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # GenAI jobs: eight idle processes
        proc = subprocess.Popen(argv, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.tmp)
        self.procs.append(proc)
        return proc, log

    def start(self, storage: Path) -> None:
        store = storage / "mlflow"
        store.mkdir(parents=True)
        # the MLflow server cluster.yaml starts on the head: SQLite backend, artifacts on the storage
        mlflow, mlog = self._spawn("mlflow", [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.mlflow), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination", str(storage / "mlartifacts"),
        ])
        head, hlog = self._spawn("head", [
            str(BIN / "ray"), "start", "--head", "--port", str(self.gcs), "--resources", '{"head_node": 1}',
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard),
            "--ray-client-server-port", str(self.client), *self._node_args(0, cpus=2),
        ])
        _wait_port(self.gcs, head, hlog, 300)
        worker, wlog = self._spawn("worker", [
            str(BIN / "ray"), "start", "--address", self.address, "--resources", '{"worker_node": 1}',
            *self._node_args(1, cpus=1),
        ])
        _wait_port(self.dashboard, head, hlog, 300)
        deadline = time.time() + 300
        while len(self.alive_nodes()) < 2:
            if worker.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the second node did not join:\n{wlog.read_text()[-3000:]}")
            time.sleep(1)
        _wait_port(self.mlflow, mlflow, mlog, 300)

    def state(self, kind: str, **params: str) -> list[dict]:
        """Ray's State API over HTTP, as `ray list KIND --detail` reads it."""
        query = "&".join(f"{k}={v}" for k, v in {"detail": "1", "limit": "1000", **params}.items())
        req = urllib.request.Request(f"{self.api}/api/v0/{kind}?{query}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        try:
            return [n for n in self.state("nodes") if n["state"] == "ALIVE"]
        except OSError:
            return []

    def ray(self, *argv: str, log: Path, timeout: float, cwd: Path = ROOT) -> tuple[int, str]:
        """(exit code, output) of a `ray` command; its output goes to `log` as it comes, so a
        command that runs out of time still shows how far it got."""
        with open(log, "w") as out:
            proc = subprocess.Popen([str(BIN / "ray"), *argv], env=self.env, cwd=cwd, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"ray {argv[0]} {argv[1]} ran past {timeout:.0f}s:\n{log.read_text()[-5000:]}")
        return code, log.read_text()

    def leftovers(self) -> list[int]:
        """Processes of this cluster still alive: their command line names its temp dir."""
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    cmd = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if str(self.temp_dir).encode() in cmd:
                    pids.append(int(proc.name))
        return pids

    def stop(self) -> None:
        """SIGKILL each process group started here (`ray start --block` and its node's
        processes, the MLflow server), then whatever still runs under this cluster's temp dir
        (a process that left the group). Nothing outside this cluster is touched."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.time() + 30
        while (left := self.leftovers()) and time.time() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def local_cluster(tmp_path):
    """The cluster, started afresh (up to twice more) if a node gives up starting: Ray allows a raylet
    30 s (fixed in ray/_private/node.py) to register, which a machine shared by many test
    runs can exceed."""
    for attempt in (1, 2, 3):
        run_dir = tmp_path / f"attempt{attempt}"
        run_dir.mkdir()
        cluster = LocalCluster(run_dir)
        try:
            cluster.start(run_dir / "storage")
            break
        except (RuntimeError, TimeoutError):
            cluster.stop()
            assert not cluster.leftovers()
            if attempt == 3:
                raise
    try:
        yield cluster
    finally:
        cluster.stop()
        left = cluster.leftovers()
        assert not left, f"processes of the test cluster left behind: {left}"


def test_job_on_two_nodes_records_in_mlflow_server(local_cluster, tmp_path):
    """`ray job submit` of a two-worker run spread over both nodes, as README's Cluster section does it."""
    from mlflow.tracking import MlflowClient

    from preprocessing.samples import cifar10 as cifar10_samples

    c = local_cluster
    storage = c.tmp / "storage"
    data = tmp_path / "cifar10"
    cifar10_samples.cifar10(data, size=360, seed=3)  # 300 train, 60 test: 4 steps an epoch at bs 64
    nodes = {n["node_id"]: n for n in c.alive_nodes()}
    assert len(nodes) == 2

    # the project's runtime env, with the MLflow port of this test's server
    runtime_env = yaml.safe_load((ROOT / "runtime_env.yaml").read_text())
    runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] = runtime_env["env_vars"]["MLFLOW_TRACKING_URI"].replace(
        ":5000", f":{c.mlflow}")
    (tmp_path / "runtime_env.yaml").write_text(yaml.safe_dump(runtime_env))

    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = git.stdout.strip() if git.returncode == 0 else "not-a-checkout"
    # the timeout is a safety net for a stuck job, not a figure: on an idle 2-core machine the
    # whole test takes a few minutes, on a shared one many times that
    code, out = c.ray("job", "submit", "--address", c.api, "--submission-id", "fastray-two-nodes",
                "--working-dir", str(ROOT), "--runtime-env", str(tmp_path / "runtime_env.yaml"), "--",
                f"FASTRAY_GIT_COMMIT={commit}", "fastray", "run", "cifar10-darknet", "--config", "tiny", "--data", str(data),
                "--num-workers", "2", "--placement", "spread", "--storage", str(storage), "--name", "two-nodes",
                log=tmp_path / "job.log", timeout=1200)
    assert code == 0 and "succeeded" in out, out[-5000:]
    result = json.loads([l for l in out.splitlines() if l.startswith("{") and '"run_id"' in l][-1])
    assert result["world_size"] == 2 and result["metrics"]["epoch"] == 2

    # one worker on each node (PACK would have put both on the head's two CPUs)
    workers = [a for a in c.state("actors") if a["class_name"] == "RayTrainWorker"]
    assert len(workers) == 2 and {w["node_id"] for w in workers} == set(nodes), workers
    groups = [g for g in c.state("placement_groups") if len(g.get("bundles") or []) == 2]
    assert groups and all({b["node_id"] for b in g["bundles"]} == set(nodes) for g in groups), groups

    # the run in the shared MLflow store: world size 2, every epoch's metrics, the model on the storage
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{c.mlflow}")
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["fastray.world_size"] == "2"
    assert run.data.tags["fastray.git_commit"] == commit  # the uploaded working dir has no .git
    assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [1, 2]
    assert {"train_loss", "accuracy", "sched_lr"} <= set(run.data.metrics)
    assert "model/model.pt" in {f.path for f in client.list_artifacts(run.info.run_id, "model")}
    assert list((storage / "mlartifacts").rglob("model.pt"))  # proxied by the server onto the storage
    assert list((storage / "runs" / "two-nodes").glob("checkpoint_*"))  # Ray Train's, on the storage
    assert list((storage / "cache").glob("cifar10-*"))
    assert not re.search(r"fastray: error", out)
    # the job's log as `ray job logs` shows it: plain lines (no bar redrawn), header, epochs, summary
    own = [l for l in out.splitlines() if l.startswith("[two-nodes] ")]
    assert "\r[two-nodes]" not in out and "cifar10-darknet, config tiny" in own[0], out[-5000:]
    assert [l.split()[2] for l in own if l.split()[1] == "epoch"] == ["1/2", "2/2"], own
    assert any(l.startswith("[two-nodes] done in ") for l in own), own

    # a flow as one job: ulmfit's two stages, each a `fastray run` of one worker joined to the
    # cluster with the job's code (a worker of 2 CPUs: the head's; a share of the cluster's 3
    # fitted no node, and the job waited forever), children of one parent run on the server
    from preprocessing.samples import imdb as imdb_samples

    imdb = tmp_path / "aclImdb"
    imdb_samples.imdb(imdb, size=600, seed=1)
    code, out = c.ray("job", "submit", "--address", c.api, "--submission-id", "fastray-flow",
                      "--working-dir", str(ROOT), "--runtime-env", str(tmp_path / "runtime_env.yaml"), "--",
                      "fastray", "flow", "ulmfit", "--config", "tiny", "--data", str(imdb), "--storage", str(storage),
                      log=tmp_path / "flow.log", timeout=1200)
    assert code == 0 and "succeeded" in out, out[-5000:]
    assert "1 worker(s) x 2 CPU" in out, out[-5000:]
    flow = json.loads([l for l in out.splitlines() if l.startswith("{") and '"parent_run_id"' in l][-1])
    assert [s["status"] for s in flow["stages"].values()] == ["done", "done"], flow
    assert client.get_run(flow["parent_run_id"]).info.status == "FINISHED"
    clas = client.get_run(flow["stages"]["clas"]["run_id"])
    assert clas.data.tags["mlflow.parentRunId"] == flow["parent_run_id"]
    assert clas.data.params["config.encoder"] == flow["stages"]["lm"]["run_id"]
