"""A run's results, kept: each started job's stdout, stderr, exit record and output folder,
streamed from the head node (one tar over the SSH connection) into the artifacts bucket.

When: by the polling round that sees a job end (so that what ended is kept whatever happens
to the run, the head node or the execution later), and by Release Head Node for the rest
(cancelled jobs, and any a round could not keep). A job kept is marked `kept` in the record.

Layout: s3://BUCKET/EXECUTION/JOB/{stdout,stderr,exit_code} as single objects; a job's output
folder as s3://BUCKET/EXECUTION/JOB/output/... (one object a file) or, when it holds more than
ARCHIVE_ABOVE_FILES files, as the one object s3://BUCKET/EXECUTION/JOB/output.tar.gz (the whole
folder, its paths starting with `output/`: unpacked in a copy of JOB/ it gives the same tree). s3://BUCKET/EXECUTION/manifest.json lists every job (its record, its
results prefix, and `output_archive` and `output_files` when its folder was packed) and whatever
could not be kept.

Why a crowded folder is packed rather than uploaded file by file, even concurrently: a file kept
as its own object is one S3 request, and much of a request's cost is CPU in this process
(signing, HTTP, parsing: 2.2 ms a put against moto in-process, about 3 ms of client CPU against
moto's server, on a 2-CPU EPYC), which threads do not share out (one interpreter lock) and which
Lambda gives at MemorySize/1769 of a vCPU: at 256 MB, 20,000 puts are some 300 s of CPU, the
function's whole timeout, however many requests are in flight. Concurrency hides the network's
latency, not that. Measured with scripts/results_benchmark.py, 20,000 files of 100 bytes: 82 s
one put at a time, 69 s with 16 puts in flight, 3.4 s packed. So a crowded folder goes into one
archive (a few requests whatever the count) and the others keep what users see today. A wide run
of many small folders is bounded too: while the plain folders of one collection would hold more
than PLAIN_OUTPUT_FILES_PER_RUN files in all, the largest of them are packed as well. The files are
counted on the head node before the stream (one `find` a job), so the choice is made up front
and nothing is held back in memory while counting.

Every S3 request goes through one pool of UPLOAD_WORKERS threads (botocore clients are thread
safe): at most that many in flight, which hides S3's latency for the plain files. The tar stream
is read in order by this thread; a file up to PART_SIZE is read into memory and put whole, a
larger one (and an archive) is sent as a multipart upload of PART_SIZE parts. Bytes read and not
yet sent are bounded: the reader waits while BUFFER_BYTES are queued or in flight (plus the one
part being filled).

Nothing is lost silently: an upload that fails (after botocore's own retries) is logged and
named in the manifest (`not_kept` and `not_kept_count` for its job, and the run's count) and in
the returned summary (`not_kept`: a few names a job, and `not_kept_count`: all of them), and the
other files are still kept. A stream that breaks raises, as before, once the uploads under way
have ended; no half file or half archive is completed.
"""

from __future__ import annotations

import copy
import io
import json
import re
import tarfile
import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, wait

from stepcluster import jobscripts, logs, usage
from stepcluster.record import Run

log = logs.logger(__name__)

#: Per-job result locations go into the run record only while it stays below this size.
RESULTS_IN_PAYLOAD_BUDGET = 192 * 1024

#: S3 requests in flight at most (the pool's threads; our own client gets as many connections).
UPLOAD_WORKERS = 16
#: An output folder with more files than this is kept as one JOB/output.tar.gz ...
ARCHIVE_ABOVE_FILES = 1000
#: ... and so are the largest others while the run's plain output files would be more than this
#: (at ~20 ms of CPU a put at 256 MB, some 40 s: a wide run must not time out either).
PLAIN_OUTPUT_FILES_PER_RUN = 2000
#: Files up to this size are one put; larger ones (and archives) go in parts of this size
#: (S3 wants at least 5 MiB a part but the last, and at most 10,000 parts: 80 GiB an object).
PART_SIZE = 8 * 1024 * 1024
#: Bytes read from the stream and not yet sent, at most (the reader waits for uploads).
BUFFER_BYTES = 32 * 1024 * 1024
#: Uploads queued or running at most (so 20,000 tiny files do not queue 20,000 tasks).
QUEUED_UPLOADS = 4 * UPLOAD_WORKERS

#: What is not kept, in the summary (it travels in the run record): names a job, jobs, chars a name.
NOT_KEPT_NAMES_IN_SUMMARY = 10
NOT_KEPT_JOBS_IN_SUMMARY = 20
NOT_KEPT_NAME_CHARS = 200
#: ... and in the manifest, names a job.
NOT_KEPT_NAMES_IN_MANIFEST = 1000

ARCHIVE_NAME = "output.tar.gz"


def collect(ssh, run: Run, bucket: str, *, s3_client, names=None, facts=None) -> dict:
    """Stream jobs' results from the head node into S3; (re)write the run's manifest.

    `names`: the jobs to keep now (the polling round that saw them end passes those); by
    default every started job not kept yet (Release Head Node: what is left). Each job kept is
    marked `kept` in `run.jobs` (so it is not copied again), and `run.results` becomes the run's
    summary so far: {"prefix", "manifest", "jobs_collected"} and, when some file could not be
    kept, "not_kept" ({JOB: [names...]}, truncated) and "not_kept_count" (all of them), over
    every call of the run. Returns that summary. `facts`: what the plan says of each job, for
    the manifest (`plan_facts`).
    """
    s3 = s3_client
    if names is None:
        names = [n for n, j in run.jobs.items() if j.job_id and not j.kept]
    names = [n for n in names if run.jobs[n].job_id]
    with _Uploader(s3, bucket) as uploader:
        if names:
            crowded = _to_pack(_output_counts(ssh, run.run_dir, names))
            with ssh.stream_script(jobscripts.results_script(run.run_dir, names)) as stream:
                head = stream.read(2)
                if head:
                    with tarfile.open(fileobj=_Prefixed(head, stream), mode="r|gz") as tar:
                        _copy(tar, uploader, run.execution, crowded)
    kept, not_kept, archives = uploader.kept, uploader.not_kept, uploader.archives
    for name in names:
        if kept.get(name):
            run.jobs[name] = run.jobs[name].but(kept=True)
    extras = {}
    for name in names:
        extra = {}
        if name in archives:
            if ARCHIVE_NAME not in not_kept.get(name, ()):
                extra["output_archive"] = f"{_prefix(bucket, run)}{name}/{ARCHIVE_NAME}"
            extra["output_files"] = archives[name]
        if not_kept.get(name):
            extra["not_kept"] = not_kept[name][:NOT_KEPT_NAMES_IN_MANIFEST]
            extra["not_kept_count"] = len(not_kept[name])
        extras[name] = extra
    manifest = write_manifest(s3, bucket, run, extras, facts)
    log.info("kept results of %d jobs under %s (%d files in %d archives)", sum(1 for n in names if kept.get(n)),
             _prefix(bucket, run), sum(archives.values()), len(archives))
    if not_kept:
        log.warning("%d result files of %d jobs could not be kept (listed in %smanifest.json)",
                    sum(len(v) for v in not_kept.values()), len(not_kept), _prefix(bucket, run))
    run.results = _summary(bucket, run, manifest)
    _add_locations(run)
    return run.results


def plan_facts(plan, prices: dict | None = None) -> dict:
    """What the manifest says of each job beyond its record: its work digest (what a resumed
    run compares, resume.py) and the cores it asked for (its core-hours), and the run's price
    table (usage.py)."""
    return {"jobs": {job.name: {"digest": job.work_digest, "cores": job.resources.cores} for job in plan.jobs},
            "prices": prices}


def write_manifest(s3, bucket: str, run: Run, extras: dict[str, dict] | None = None,
                   facts=None) -> dict:
    """s3://BUCKET/EXECUTION/manifest.json: every job's record and where its results are.

    Written each time some results are kept, so that it is there whatever happens later (the
    head node lost, the execution aborted). `extras` are what this call learnt of some jobs
    (their packed output, the files not kept); the other jobs keep what the manifest already
    said of them. Each job's `digest` (its handler, source and resources) and the execution's
    ARN are what a resumed run checks it against (resume.py); each job's `usage` (elapsed,
    core-hours) and the run's `usage` (usage.py) say what it used. Returns the manifest."""
    key = f"{run.execution}/manifest.json"
    before = {}
    try:
        before = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).get("jobs") or {}
    except s3.exceptions.NoSuchKey:
        pass
    prefix = _prefix(bucket, run)
    jobs = {}
    for name, job in run.jobs.items():
        earlier = {k: v for k, v in (before.get(name) or {}).items() if k in _MANIFEST_EXTRAS}
        extra = (extras or {}).get(name, earlier)
        # a resumed job's results stay where the run that made them kept them
        where = f"s3://{bucket}/{job.resumed_from}/{name}/" if job.resumed_from else f"{prefix}{name}/"
        fact = ((facts or {}).get("jobs") or {}).get(name) or {}
        digest = {"digest": fact["digest"]} if "digest" in fact else {}
        used = usage.job_usage(job.started, job.ended, fact.get("cores", 1)) if not job.resumed_from else {}
        jobs[name] = {**job.to_dict(), "results": where if job.kept else None, **digest,
                      **({"usage": used} if used else {}), **extra}
    used = {**(run.usage or {}), **usage.jobs_total({n: e.get("usage") or {} for n, e in jobs.items()})}
    used["estimate"] = usage.estimate(used, (facts or {}).get("prices"))
    if (facts or {}).get("prices"):
        used["prices"] = facts["prices"]
    manifest = {"execution": run.execution, "execution_arn": run.execution_arn, "plan_digest": run.plan_digest,
                "cluster_name": run.cluster_name, "usage": used, "jobs": jobs}
    lost = sum(entry.get("not_kept_count", 0) for entry in jobs.values())
    if lost:
        manifest["not_kept_count"] = lost
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest, indent=1).encode(),
                  ContentType="application/json")
    return manifest


def write_summary(s3, bucket: str, run: Run, facts=None) -> dict:
    """The manifest and the run's summary from the record alone, nothing copied (the head node
    cannot be reached: what the rounds kept is what there is)."""
    run.results = _summary(bucket, run, write_manifest(s3, bucket, run, facts=facts))
    return run.results


#: What the manifest says of a job beyond its record (kept from one write to the next).
_MANIFEST_EXTRAS = ("output_archive", "output_files", "not_kept", "not_kept_count")


def _prefix(bucket: str, run: Run) -> str:
    return f"s3://{bucket}/{run.execution}/"


def _summary(bucket: str, run: Run, manifest: dict) -> dict:
    """The run's summary so far (it travels in the run record): from the manifest, so that
    what earlier calls could not keep is still counted."""
    prefix = _prefix(bucket, run)
    summary = {"prefix": prefix, "manifest": f"{prefix}manifest.json",
               "jobs_collected": sum(1 for job in run.jobs.values() if job.kept)}
    lost = [(name, entry["not_kept"]) for name, entry in manifest["jobs"].items() if entry.get("not_kept")]
    if lost:
        summary["not_kept"] = {name: [_shorten(n) for n in names[:NOT_KEPT_NAMES_IN_SUMMARY]]
                               for name, names in lost[:NOT_KEPT_JOBS_IN_SUMMARY]}
        summary["not_kept_count"] = manifest["not_kept_count"]
    return summary


def _add_locations(run: Run) -> None:
    """Each kept job's location in the execution output too, while the payload stays well
    under Step Functions' 256 KiB (for very wide runs the manifest alone lists them; a run
    whose jobs are not in its record at all, jobtable.py, has them there)."""
    if run.jobs_table is not None:
        return
    prefix = run.results["prefix"]
    todo = [name for name, job in run.jobs.items() if job.kept and not job.results and not job.resumed_from]
    extra = sum(len(prefix) + len(name) + 16 for name in todo)
    if len(json.dumps(run.to_dict(), separators=(",", ":"))) + extra < RESULTS_IN_PAYLOAD_BUDGET:
        for name in todo:
            run.jobs[name] = run.jobs[name].but(results=f"{prefix}{name}/")


def _shorten(name: str) -> str:
    return name if len(name) <= NOT_KEPT_NAME_CHARS else name[:NOT_KEPT_NAME_CHARS - 1] + "…"


def _output_counts(ssh, run_dir: str, names: list[str]) -> dict[str, int]:
    """How many files each job's output folder holds (asked of the head node: one `find` over
    all of them, not a pipeline a job; find walks its starting points one after the other, so
    `uniq -c` counts each folder's lines without a sort)."""
    q = jobscripts.q
    script = "\n".join([
        f"cd {q(run_dir + '/jobs')} || exit 0",
        "dirs=()",
        jobscripts.bash_array("names", map(q, names)),
        'for n in "${names[@]}"; do [ -d "$n/output" ] && dirs+=("$n/output"); done',
        '[ ${#dirs[@]} -gt 0 ] || exit 0',
        # %H: the starting point (NAME/output; job names have no newline), once a file
        "find \"${dirs[@]}\" -type f -printf '%H\\n' 2>/dev/null | uniq -c", "exit 0", ""])
    with ssh.stream_script(script) as stream:
        text = stream.read().decode(errors="replace")
    counts, wanted = {}, set(names)
    for line in text.splitlines():
        count, _, folder = line.strip().partition(" ")
        name = folder.removesuffix("/output")
        if count.isdigit() and name in wanted:
            counts[name] = int(count)
    return counts


def _to_pack(counts: dict[str, int]) -> set[str]:
    """The jobs whose output/ is packed: above ARCHIVE_ABOVE_FILES files, then the largest of
    the others while they would still be more than PLAIN_OUTPUT_FILES_PER_RUN in all."""
    packed = {name for name, count in counts.items() if count > ARCHIVE_ABOVE_FILES}
    plain = sorted((n for n in counts if n not in packed), key=lambda n: (-counts[n], n))
    left = sum(counts[n] for n in plain)
    for name in plain:
        if left <= PLAIN_OUTPUT_FILES_PER_RUN:
            break
        packed.add(name)
        left -= counts[name]
    return packed


def _copy(tar: tarfile.TarFile, uploader: _Uploader, execution: str, crowded) -> None:
    """Every regular file of the stream into S3, the crowded jobs' output/ packed."""
    archive: _Archive | None = None
    try:
        for member in tar:
            if not member.isfile():
                continue  # folders are implied; links are not followed out
            job, _, rest = member.name.partition("/")
            # the wrapper's result file is kept as exit_code: the job's, and an earlier attempt's
            rest = re.sub(r"^((?:attempt-\d+/)?)result$", r"\1exit_code", rest)
            # results_script sends a job's files together; a job's output/ seen again after its
            # archive was closed would be kept as files.
            packed = job in crowded and rest.startswith("output/") and job not in uploader.archives
            if archive is not None and (archive.job != job or not packed):
                archive.close()
                archive = None
            source = tar.extractfile(member)
            if packed:
                if archive is None:
                    archive = _Archive(uploader, job, f"{execution}/{job}/{ARCHIVE_NAME}")
                archive.add(member, rest, source)
            elif member.size <= PART_SIZE:
                uploader.put(job, rest, f"{execution}/{job}/{rest}", source, member.size)
            else:
                upload = _Multipart(uploader, job, rest, f"{execution}/{job}/{rest}")
                try:
                    upload.send_from(source, member.size)
                except BaseException:
                    upload.abandon()
                    raise
                upload.close()
        if archive is not None:
            archive.close()
            archive = None
    except BaseException:
        if archive is not None:   # the stream broke: no half archive is kept
            archive.abandon()
        raise


class _Uploader:
    """S3 requests made by a pool of UPLOAD_WORKERS threads, bytes waiting bounded; what was
    kept and what was not, a job's files by name."""

    def __init__(self, s3, bucket: str):
        self.s3, self.bucket = s3, bucket
        self._pool = ThreadPoolExecutor(UPLOAD_WORKERS, thread_name_prefix="results")
        self._room = threading.Condition()
        self._bytes = self._tasks = 0
        self.kept: dict[str, int] = defaultdict(int)
        self.not_kept: dict[str, list[str]] = defaultdict(list)
        self.archives: dict[str, int] = {}

    def __enter__(self) -> _Uploader:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)

    def reserve(self, size: int) -> None:
        """Wait until `size` more bytes (and one more task) may be buffered."""
        with self._room:
            # One item bigger than the budget still goes, alone.
            self._room.wait_for(lambda: self._tasks < QUEUED_UPLOADS and (
                not size or self._bytes + size <= BUFFER_BYTES or self._bytes == 0))
            self._bytes += size
            self._tasks += 1

    def start(self, size: int, work, *args, **kwargs) -> Future:
        """Run work(*args, **kwargs) in the pool, for a reservation of `size` bytes made before."""
        def task():
            try:
                return work(*args, **kwargs)
            finally:
                with self._room:
                    self._bytes -= size
                    self._tasks -= 1
                    self._room.notify_all()
        return self._pool.submit(task)

    def request(self, size: int, work, *args, **kwargs) -> Future:
        self.reserve(size)
        return self.start(size, work, *args, **kwargs)

    def put(self, job: str, name: str, key: str, source, size: int) -> None:
        """Read `size` bytes of source and put them as one object."""
        self.reserve(size)
        try:
            data = source.read(size) if size else b""
        except BaseException:
            self.start(size, lambda: None)
            raise
        self.start(size, self._put, job, name, key, data)

    def _put(self, job: str, name: str, key: str, data: bytes) -> None:
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as exc:  # noqa: BLE001 -- reported, in the manifest and summary
            self.lost(job, name, exc)
        else:
            self.done(job)

    def done(self, job: str) -> None:
        with self._room:
            self.kept[job] += 1

    def lost(self, job: str, name: str, exc: BaseException) -> None:
        with self._room:
            self.not_kept[job].append(name)
            first = sum(len(v) for v in self.not_kept.values()) <= 20
        if first:
            log.warning("could not keep %s of job %s: %s", name, job, exc)


class _Multipart:
    """One object sent in PART_SIZE parts through the uploader (a single put if it turns out
    smaller than one part): write() to it, or send_from() a stream; close() completes it."""

    def __init__(self, uploader: _Uploader, job: str, name: str, key: str):
        self._up, self.job, self.name, self.key = uploader, job, name, key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._failed = False
        self._parts: list[Future] = []
        self.closed = False

    def write(self, data) -> int:
        if self.closed:
            return len(data)   # abandoned (an unclosed tar writer flushing when dropped)
        self._buffer += data
        while len(self._buffer) >= PART_SIZE:
            part = bytes(self._buffer[:PART_SIZE])
            del self._buffer[:PART_SIZE]
            self._up.reserve(len(part))
            self._send(part)
        return len(data)

    def send_from(self, source, size: int) -> None:
        """Read `size` bytes of source in parts, each read only once it may be buffered."""
        while size > 0:
            chunk = min(PART_SIZE, size)
            self._up.reserve(chunk)
            try:
                part = source.read(chunk)
            except BaseException:
                self._up.start(chunk, lambda: None)
                raise
            self._send(part)
            size -= chunk

    def _send(self, part: bytes) -> None:
        """Start uploading `part` (its bytes already reserved)."""
        if self._upload_id is None and not self._failed:
            try:
                self._upload_id = self._up.request(0, self._up.s3.create_multipart_upload,
                                                   Bucket=self._up.bucket, Key=self.key
                                                   ).result()["UploadId"]
            except Exception as exc:  # noqa: BLE001
                self._failed = True
                self._up.lost(self.job, self.name, exc)
        if self._failed:
            self._up.start(len(part), lambda: None)   # read and dropped: the loss is recorded
            return
        number = len(self._parts) + 1
        self._parts.append(self._up.start(len(part), self._up.s3.upload_part, Bucket=self._up.bucket,
                                          Key=self.key, UploadId=self._upload_id,
                                          PartNumber=number, Body=part))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._upload_id is None and not self._failed:
            data = bytes(self._buffer)
            self._up.reserve(len(data))
            self._up.start(len(data), self._up._put, self.job, self.name, self.key, data)
            return
        if self._buffer:
            part = bytes(self._buffer)
            self._buffer.clear()
            self._up.reserve(len(part))
            self._send(part)
        if not self._failed:
            # Queued after its parts: by the time a worker runs it, they have all started.
            self._up.request(0, self._complete)

    def abandon(self) -> None:
        """Not to be kept (the stream broke): what was sent is dropped, nothing completed."""
        if self.closed:
            return
        self.closed = self._failed = True
        if self._upload_id is not None:
            self._up.request(0, self._abort)

    def _abort(self) -> None:
        wait(self._parts)
        try:
            self._up.s3.abort_multipart_upload(Bucket=self._up.bucket, Key=self.key, UploadId=self._upload_id)
        except Exception as exc:  # noqa: BLE001 -- the object itself is already reported or moot
            log.warning("could not abort the partial upload %s of %s (its parts stay billed until "
                        "aborted): %s", self._upload_id, self.key, exc)

    def _complete(self) -> None:
        wait(self._parts)
        s3, bucket = self._up.s3, self._up.bucket
        try:
            parts = [{"PartNumber": n, "ETag": f.result()["ETag"]} for n, f in enumerate(self._parts, 1)]
            s3.complete_multipart_upload(Bucket=bucket, Key=self.key, UploadId=self._upload_id,
                                         MultipartUpload={"Parts": parts})
        except Exception as exc:  # noqa: BLE001 -- reported, in the manifest and summary
            self._up.lost(self.job, self.name, exc)
            self._abort()
        else:
            self._up.done(self.job)


class _Archive:
    """A job's output/ packed as it streams by: a tar.gz written into a multipart upload."""

    def __init__(self, uploader: _Uploader, job: str, key: str):
        self.job, self.files = job, 0
        self._upload = _Multipart(uploader, job, ARCHIVE_NAME, key)
        self._tar = tarfile.open(fileobj=self._upload, mode="w|gz")
        self._archives = uploader.archives

    def add(self, member: tarfile.TarInfo, name: str, source) -> None:
        info = copy.copy(member)
        info.name, info.type = name, tarfile.REGTYPE
        # a pax path read with the member would override the new name
        info.pax_headers = {k: v for k, v in member.pax_headers.items() if k not in ("path", "linkpath")}
        self._tar.addfile(info, source)
        self.files += 1

    def close(self) -> None:
        self._tar.close()
        self._upload.close()
        self._archives[self.job] = self.files

    def abandon(self) -> None:
        self._upload.abandon()


class _Prefixed(io.RawIOBase):
    """A stream with a few bytes already read put back in front."""

    def __init__(self, head: bytes, rest):
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._rest.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        if len(data) < size:
            data += self._rest.read(size - len(data))
        return data
