"""The compiled jobs plan: what a validated jobs config becomes at deploy time.

`stepcluster preprocess` writes the plan (plan.json plus one archive per local_path job) into
the functions' code folder, so every Lambda reads the same plan from its own package. The state
machine carries only the plan's digest (substitution JobsPlanDigest): the definition keeps the
same size for 1 or 1,000 jobs, no CloudFormation parameter has to hold the job list (4,096-byte
limit), and a state machine deployed with one plan refuses to run functions holding another.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from stepcluster import graph
from stepcluster.config import JobsConfig, Problem
from stepcluster.errors import ConfigError, PlanError
from stepcluster.resources import Resources

PLAN_FORMAT = 1
PLAN_FILE = "plan.json"
PAYLOAD_DIR = "payloads"
#: Where the plan lives inside the functions' code (functions/plan -> /var/task/plan).
BUNDLED_PLAN_DIR = Path(__file__).resolve().parent.parent / "plan"
#: local_path packages above this size are refused: they travel inside the Lambda package,
#: whose unzipped size AWS caps at 250 MB for all functions' code together.
MAX_PAYLOAD_BYTES = 50 * 1024 * 1024
#: local_path folders with more files than this are refused, counted while walking, so that
#: `local_path = /` or a home folder stops at once instead of walking the whole tree. 100,000 is
#: above any job's input folder we know of (a full Linux kernel source tree has ~90,000 files)
#: and far above what the release step keeps per run (10,000 files, README "Results"); at
#: 512 bytes of tar header per file it also bounds the header overhead (~50 MiB, the size cap).
MAX_PAYLOAD_FILES = 100_000


@dataclass(frozen=True)
class PlannedJob:
    name: str
    handler: str
    wait_time: int
    s3_uri: str | None = None
    archive: str | None = None  # path relative to the plan folder, for local_path jobs
    package_uri: str | None = None  # where preprocess uploaded that archive (then not bundled)
    resources: Resources = Resources()
    depends_on: tuple[str, ...] = ()    # parallel: it starts once each of these succeeded
    retries: int = 0                    # submitted again up to this many times after a failure...
    retry_on: tuple[str, ...] = ()      # ...that these name (exit codes, scheduler states; (): any)

    def describe_source(self) -> str:
        return self.s3_uri or self.package_uri or f"local archive {self.archive}"

    def to_dict(self) -> dict:
        source = {"s3_uri": self.s3_uri} if self.s3_uri else {"archive": self.archive}
        if self.package_uri:
            source["package_uri"] = self.package_uri
        # only when set: a seed config's plan (and so its digest) is what it always was
        request = {"resources": self.resources.to_dict()} if self.resources else {}
        workflow = {key: value for key, value in (("depends_on", list(self.depends_on)), ("retries", self.retries),
                                                  ("retry_on", list(self.retry_on))) if value}
        return {"name": self.name, "handler": self.handler, "wait_time": self.wait_time, **source,
                **request, **workflow}

    @functools.cached_property
    def work_digest(self) -> str:
        """What the job does: its handler, its source (a local_path package is named by its
        content; an s3_uri by its address, its objects by the record's `source_version`) and
        what it asks of the scheduler. A resumed run skips a job that succeeded before only if
        this is the same."""
        source = self.s3_uri or self.archive
        canonical = json.dumps({"handler": self.handler, "source": source,
                                "resources": self.resources.to_dict() if self.resources else {}},
                               sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Plan:
    order: str                      # "sequential" | "parallel"
    jobs: tuple[PlannedJob, ...]
    digest: str
    folder: Path | None = None      # where archives are read from
    backend: str = "existing"       # the cluster backend the plan was prepared for
    cluster_config: str | None = None  # its cluster configuration file, relative to folder
    on_failure: str = "cancel"      # "finish": jobs that do not wait for a failed one go on

    @functools.cached_property
    def prerequisites(self) -> dict[str, tuple[str, ...]]:
        """{job: the jobs it waits for}: a sequential run is a chain, a parallel one its
        depends_on (none: a fan)."""
        if self.order == "sequential":
            return graph.chain(self.names)
        return {job.name: job.depends_on for job in self.jobs}

    def cluster_config_path(self) -> Path:
        if self.folder is None or self.cluster_config is None:
            raise PlanError(f"the deployed plan has no cluster configuration for backend {self.backend!r}: "
                            "run `stepcluster preprocess JOBS --backend ... --cluster-config FILE`")
        return self.folder / self.cluster_config

    @property
    def names(self) -> list[str]:
        return [job.name for job in self.jobs]

    def job(self, name: str) -> PlannedJob:
        return self._by_name[name]

    @functools.cached_property
    def _by_name(self) -> dict[str, PlannedJob]:
        # a lookup a job, 10,000 jobs a round: not a scan each time
        return {job.name: job for job in self.jobs}

    @property
    def wait_times(self) -> dict[str, int]:
        return {job.name: job.wait_time for job in self.jobs}

    def archive_bytes(self, job: PlannedJob, s3_client=None) -> bytes:
        """The job's package: from S3 when preprocess uploaded it, else bundled with the plan."""
        if job.package_uri:
            import boto3
            from botocore.exceptions import BotoCoreError, ClientError

            bucket, _, key = job.package_uri[5:].partition("/")
            try:
                return (s3_client or boto3.client("s3")).get_object(Bucket=bucket, Key=key)["Body"].read()
            except (ClientError, BotoCoreError) as exc:
                raise PlanError(f"package of job {job.name!r} cannot be read from {job.package_uri}: {exc}") from exc
        if self.folder is None or job.archive is None:
            raise PlanError(f"job {job.name!r} has no archive in the plan")
        path = self.folder / job.archive
        try:
            return path.read_bytes()
        except OSError as exc:
            raise PlanError(f"archive of job {job.name!r} is missing from the deployment: {path}") from exc

    def to_dict(self) -> dict:
        options = {"on_failure": self.on_failure} if self.on_failure != "cancel" else {}
        return {"format": PLAN_FORMAT, "order": self.order, "digest": self.digest,
                "backend": self.backend, "cluster_config": self.cluster_config, **options,
                "jobs": [job.to_dict() for job in self.jobs]}


def _digest(order: str, jobs: list[PlannedJob], backend: str, cluster_config: str | None,
            on_failure: str = "cancel") -> str:
    # on_failure only when set: a seed config's digest is what it always was
    options = {"on_failure": on_failure} if on_failure != "cancel" else {}
    canonical = json.dumps({"order": order, "jobs": [j.to_dict() for j in jobs],
                            "backend": backend, "cluster_config": cluster_config, **options},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _workflow(spec) -> dict:
    return {"depends_on": spec.depends_on, "retries": spec.retries, "retry_on": spec.retry_on}


def build_plan(config: JobsConfig, folder: Path, *, backend: str = "existing",
               cluster_config: Path | None = None,
               upload: "Callable[[str, bytes], str] | None" = None) -> Plan:
    """Compile `config` into `folder` (plan.json + payloads/); return the plan.

    local_path jobs are packed into content-addressed archives, so an unchanged job keeps its
    archive name and an unchanged config keeps its digest. With `upload(name, data) -> s3 URI`
    the archives go to S3 instead of into the plan folder (staged from there at run time).
    Raises ConfigError naming the job
    when a local_path cannot be packaged (escaping symlink, handler absent, too large).

    The plan is written into a folder beside `folder` and swapped in only when it is complete
    (swap_plan_folder): `folder` holds the old plan or the new one, whole, never a mix.
    """
    folder = Path(folder)
    staging = new_staging_folder(folder)
    try:
        plan = write_plan(config, staging, backend=backend, cluster_config=cluster_config, upload=upload)
        old = swap_plan_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)   # gone when swapped in; else a failed attempt
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)       # stale payloads leave only after the swap
    return dataclasses.replace(plan, folder=folder)


def write_plan(config: JobsConfig, folder: Path, *, backend: str = "existing",
               cluster_config: Path | None = None,
               upload: "Callable[[str, bytes], str] | None" = None) -> Plan:
    """build_plan's work, written straight into `folder` (a new, empty folder: see
    new_staging_folder); nothing else is touched, except that `upload` is called for each
    local_path package. A file that cannot be read or written is a ConfigError naming it."""
    folder = Path(folder)
    try:
        (folder / PAYLOAD_DIR).mkdir(parents=True, exist_ok=True)
        jobs, problems = [], []
        for spec in config.jobs:
            if spec.s3_uri:
                jobs.append(PlannedJob(spec.name, spec.handler, spec.wait_time, s3_uri=spec.s3_uri,
                                       resources=spec.resources, **_workflow(spec)))
                continue
            try:
                data = pack_local_path(Path(spec.local_path), spec.handler)
            except ValueError as exc:
                problems.append(Problem(config.path, None, f"job {spec.name}", "local_path", str(exc)))
                continue
            name = f"{PAYLOAD_DIR}/{hashlib.sha256(data).hexdigest()[:32]}.tar.gz"
            if upload:
                jobs.append(PlannedJob(spec.name, spec.handler, spec.wait_time, archive=name,
                                       package_uri=upload(name, data), resources=spec.resources,
                                       **_workflow(spec)))
                continue
            target = folder / name
            if not target.exists():
                target.write_bytes(data)
            jobs.append(PlannedJob(spec.name, spec.handler, spec.wait_time, archive=name,
                                   resources=spec.resources, **_workflow(spec)))
        if problems:
            raise ConfigError(problems)
        config_name = None
        if cluster_config is not None:
            # Content-addressed like the payloads: the digest changes with the cluster config.
            data = Path(cluster_config).read_bytes()
            config_name = f"{PAYLOAD_DIR}/cluster-{hashlib.sha256(data).hexdigest()[:32]}{Path(cluster_config).suffix}"
            (folder / config_name).write_bytes(data)
        plan = Plan(config.order, tuple(jobs), _digest(config.order, jobs, backend, config_name, config.on_failure),
                    folder, backend, config_name, config.on_failure)
        (folder / PLAN_FILE).write_text(json.dumps(plan.to_dict(), indent=1) + "\n")
    except OSError as exc:
        raise ConfigError([Problem(str(exc.filename or folder), None, None, None,
                                   f"cannot be read or written ({exc.strerror or exc}): nothing was "
                                   "changed; fix its permissions or free space and run again")]) from None
    return plan


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{uuid.uuid4().hex[:12]}"


def new_staging_folder(target: Path) -> Path:
    """A new, empty folder beside `target` (same filesystem: it can be renamed onto it).
    Leftovers of an attempt that crashed are cleared first (see recover_plan_folder)."""
    target = Path(target)
    recover_plan_folder(target)
    staging = _sibling(target, "new")
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError([Problem(str(target.parent), None, None, None,
                                   f"cannot create the plan's folder there ({exc.strerror or exc})")]) from None
    return staging


def recover_plan_folder(target: Path) -> None:
    """After a crash in swap_plan_folder: if `target` is missing and its old copy is beside it,
    put the old copy back (whole); then remove the other leftovers (they sit inside
    functions/, which `sam build` would ship)."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    leftovers = sorted(target.parent.glob(f".{target.name}.new-*")) + \
        sorted(target.parent.glob(f".{target.name}.old-*"))
    olds = [p for p in leftovers if ".old-" in p.name]
    if not target.exists() and olds:
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.replace(newest, target)
        leftovers.remove(newest)
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def swap_plan_folder(staging: Path, target: Path) -> Path | None:
    """Put the complete folder `staging` in the place of `target`. Returns where the old
    `target` was moved (the caller removes it, or gives it back with unswap_plan_folder), or
    None when there was none. Two renames: if the process dies between them, `target` is
    absent and the old plan is whole beside it, and the next preprocess or build_plan puts it
    back (recover_plan_folder); it is never a mix of the two plans."""
    target = Path(target)
    old = None
    try:
        if target.exists():
            old = _sibling(target, "old")
            os.replace(target, old)
        os.replace(staging, target)
    except OSError as exc:
        if old is not None and not target.exists():
            os.replace(old, target)
        raise ConfigError([Problem(str(target), None, None, None,
                                   f"cannot replace the plan ({exc.strerror or exc}): it was left "
                                   "as it was")]) from None
    return old


def unswap_plan_folder(old: Path | None, target: Path) -> None:
    """Undo swap_plan_folder: the new plan is removed and the old one (if any) put back."""
    target = Path(target)
    discard = _sibling(target, "new")
    os.replace(target, discard)
    if old is not None:
        os.replace(old, target)
    shutil.rmtree(discard, ignore_errors=True)


def load_plan(folder: Path | str | None = None) -> Plan:
    """Read the plan bundled with the functions (or from `folder`, or $STEPCLUSTER_PLAN_DIR)."""
    folder = Path(folder or os.environ.get("STEPCLUSTER_PLAN_DIR") or BUNDLED_PLAN_DIR)
    path = folder / PLAN_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"no jobs plan deployed ({path} is missing): run `stepcluster preprocess "
                        "JOBS_CONFIG` before `sam build`") from None
    except (OSError, ValueError) as exc:
        raise PlanError(f"jobs plan {path} is unreadable: {exc}") from exc
    if raw.get("format") != PLAN_FORMAT:
        raise PlanError(f"jobs plan {path} has format {raw.get('format')!r}, expected {PLAN_FORMAT}")
    jobs = tuple(PlannedJob(j["name"], j["handler"], int(j["wait_time"]),
                            s3_uri=j.get("s3_uri"), archive=j.get("archive"),
                            package_uri=j.get("package_uri"), resources=Resources.from_dict(j.get("resources")),
                            depends_on=tuple(j.get("depends_on") or ()), retries=int(j.get("retries") or 0),
                            retry_on=tuple(j.get("retry_on") or ()))
                 for j in raw["jobs"])
    return Plan(raw["order"], jobs, raw["digest"], folder, raw.get("backend", "existing"),
                raw.get("cluster_config"), raw.get("on_failure", "cancel"))


def pack_local_path(path: Path, handler: str) -> bytes:
    """A reproducible tar.gz of a local file (staged under its own name) or folder (its contents).

    Same content gives the same bytes (sorted entries, zeroed times and owners). Refuses
    symlinks leading outside the folder, special files, a handler that is not in the package,
    files or folders that cannot be read (never a package silently missing them), and packages
    above MAX_PAYLOAD_BYTES or MAX_PAYLOAD_FILES (checked while walking: stops at the first
    excess). Every refusal is a ValueError naming the path.
    """
    path = path.resolve()
    entries = _package_entries(path)
    names = {arcname for arcname, _ in entries}
    if PurePosixPath(handler).as_posix() not in names:
        shown = ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")
        raise ValueError(f"handler {handler!r} is not among the files of {path} ({shown or 'empty'})")

    buffer = io.BytesIO()
    total = 0
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for arcname, source in sorted(entries):
            try:
                with source.open("rb") as handle:
                    st = os.fstat(handle.fileno())
                    total += st.st_size      # again: a file may have grown since the walk
                    if total > MAX_PAYLOAD_BYTES:
                        raise ValueError(_too_large(path))
                    info = tarfile.TarInfo(arcname)
                    info.size = st.st_size
                    info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                    tar.addfile(info, handle)
            except OSError as exc:   # unreadable, or shorter than when it was walked
                raise ValueError(_unreadable(source, exc)) from None
    return buffer.getvalue()


def _unreadable(source, exc: OSError) -> str:
    return (f"{exc.filename or source} cannot be read ({exc.strerror or exc}): every file and "
            "folder of a local_path must be readable, or moved out of it")


def _too_large(path: Path) -> str:
    return (f"{path} holds more than {MAX_PAYLOAD_BYTES // 2**20} MiB; put large inputs in S3 "
            "and use s3_uri")


def _package_entries(path: Path) -> list[tuple[str, Path]]:
    """(name in the package, regular file to read) for a resolved file or folder. The folder is
    walked once, checking each entry as it is met, so the caps stop the walk at the first excess
    (`local_path = /` is refused at once) and an unreadable folder is an error, not a hole."""
    try:
        top = path.stat()
    except OSError as exc:
        raise ValueError(_unreadable(path, exc)) from None
    if stat.S_ISREG(top.st_mode):
        if top.st_size > MAX_PAYLOAD_BYTES:
            raise ValueError(_too_large(path))
        return [(path.name, path)]
    if not stat.S_ISDIR(top.st_mode):
        raise ValueError(f"{path} is neither a file nor a folder")

    def refuse(exc: OSError):   # os.walk would otherwise skip the folder it cannot list
        raise ValueError(_unreadable(path, exc))

    entries: list[tuple[str, Path]] = []
    total = 0
    for root, dirs, files in os.walk(path, onerror=refuse, followlinks=False):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            source = Path(root, name)
            entries.append((source.relative_to(path).as_posix(), source))
            if len(entries) > MAX_PAYLOAD_FILES:
                raise ValueError(f"{path} holds more than {MAX_PAYLOAD_FILES:,} files; pack them "
                                 "into an archive, or put them in S3 and use s3_uri")
            try:
                if source.is_symlink():
                    target = source.resolve()
                    if not target.is_relative_to(path):
                        raise ValueError(f"{source} is a symlink to {target}, outside {path}")
                    entries[-1] = (entries[-1][0], target)
                st = entries[-1][1].stat()
            except OSError as exc:
                raise ValueError(_unreadable(source, exc)) from None
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{entries[-1][1]} is not a regular file")
            total += st.st_size
            if total > MAX_PAYLOAD_BYTES:
                raise ValueError(_too_large(path))
    return entries
