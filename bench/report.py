"""bench/RESULTS.md, written from a :class:`~bench.results.Results`."""

from __future__ import annotations

import math

from bench import peers, recovery, restore
from bench.results import Measurement, MemoryRun, Results, Resume
from worker.units import MiB, format_size

#: Issue 3's targets.
NULL_SINK_SHARE = 0.75
MOTO_FACTOR = 3.0
RSS_LIMIT = 300 * MiB


def _rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def _mib(value: float) -> str:
    return f"{value / MiB:.0f}"


def _seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _met(ok: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[ok]


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _spread(m: Measurement) -> str:
    rates = sorted(m.size / run.seconds / 1e6 for run in m.good)
    return f"{rates[0]:.0f}-{rates[-1]:.0f}" if len(rates) > 1 else "-"


def _throughput(results: Results) -> list[str]:
    lines = [
        "| what | into | MB/s, wall (median) | min-max | MB/s, transfer only | wall s "
        "| client CPU s | client peak RSS MiB | image server CPU s | store CPU s "
        "| other load CPU s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in results.measurements.values():
        if not m.measured:
            why = m.skipped or "; ".join(run.error or "" for run in m.runs)
            lines.append(f"| {_cell(m.label)} | {m.store} | {_cell(why)} | | | | | | | | |")
            continue
        transfer = m.rate("transfer") if m.key.startswith("pipeline") else math.nan
        store = {"moto": "moto", "null sink": "null sink"}.get(m.store)
        lines.append(
            f"| {_cell(m.label)} | {m.store} | **{_rate(m.rate())}** | {_spread(m)} "
            f"| {_rate(transfer)} "
            f"| {_seconds(m.median('seconds'))} | {_seconds(m.median('cpu'))} "
            f"| {_mib(m.peak_rss)} | {_seconds(m.server_cpu('image server'))} "
            f"| {_seconds(m.server_cpu(store)) if store else '-'} "
            f"| {_seconds(m.median('others_cpu'))} |"
        )
    failed = [
        f"- {m.label} into {m.store}: run {i} failed: {run.error}"
        for m in results.measurements.values()
        for i, run in enumerate(m.runs, 1)
        if run.error
    ]
    if failed:
        lines += ["", "Failed runs (not in the medians):", "", *failed]
    rclone = results.measurements.get("rclone-moto")
    if rclone is not None and rclone.measured:
        copy = rclone.rate("copy")
        lines += [
            "",
            f"rclone's copy alone (without `md5sum --download`, so unverified) ran at "
            f"{_rate(copy)} MB/s into moto.",
        ]
    return lines


def _best_peer(results: Results) -> Measurement | None:
    found = [results.measurements.get(key) for key in ("rclone-moto", "aws-moto")]
    measured = [m for m in found if m is not None and m.measured]
    return max(measured, key=lambda m: m.rate()) if measured else None


def _targets(results: Results) -> list[str]:
    get = results.measurements.get
    openssl, null, moto = get("openssl"), get("pipeline-null"), get("pipeline-moto")
    lines = ["| target | measured | |", "|---|---|---|"]
    if openssl and null and openssl.measured and null.measured:
        limit = openssl.rate()
        wall, transfer = null.rate() / limit, null.rate("transfer") / limit
        lines.append(
            f"| into the null sink ≥ 75 % of `curl \\| openssl md5` ({_rate(limit)} MB/s) "
            f"| {wall:.0%} by wall time ({_rate(null.rate())} MB/s), {transfer:.0%} by transfer "
            f"time ({_rate(null.rate('transfer'))} MB/s) "
            f"| {_met(transfer >= NULL_SINK_SHARE)} (transfer), "
            f"{_met(wall >= NULL_SINK_SHARE)} (wall) |"
        )
    else:
        lines.append(f"| into the null sink ≥ 75 % of `openssl md5` | - | {_met(None)} |")
    peer = _best_peer(results)
    if moto and peer and moto.measured:
        wall, transfer = moto.rate() / peer.rate(), moto.rate("transfer") / peer.rate()
        lines.append(
            f"| into moto ≥ 3x the best peer ({_cell(peer.label)}: {_rate(peer.rate())} MB/s) "
            f"| {_ratio(wall)}x by wall time ({_rate(moto.rate())} MB/s), {_ratio(transfer)}x by "
            f"transfer time ({_rate(moto.rate('transfer'))} MB/s) "
            f"| {_met(transfer >= MOTO_FACTOR)} |"
        )
    else:
        lines.append(f"| into moto ≥ 3x the best peer | - | {_met(None)} |")
    default = [run for run in results.memory if run.memory_limit == results.memory_limit]
    if default and all(run.measurement.measured for run in default):
        peaks, ok = _peaks(default)
        lines.append(
            f"| peak RSS < 300 MiB, the same for every image size (default "
            f"`SNAPARCHIVE_MEMORY_LIMIT={format_size(results.memory_limit)}`) | {peaks} "
            f"| {_met(ok)} |"
        )
        for limit in sorted({run.memory_limit for run in results.memory} - {results.memory_limit}):
            others = [r for r in results.memory if r.memory_limit == limit and r.measurement.good]
            peaks, ok = _peaks(others)
            lines.append(
                f"| the same with `SNAPARCHIVE_MEMORY_LIMIT={format_size(limit)}` | {peaks} "
                f"| {_met(ok)} |"
            )
    return lines


def _peaks(runs: list[MemoryRun]) -> tuple[str, bool]:
    """The peak RSS of each image size, and whether every one is under the target."""
    text = ", ".join(f"{format_size(r.size)}: {_mib(r.measurement.peak_rss)} MiB" for r in runs)
    return text, all(r.measurement.peak_rss < RSS_LIMIT for r in runs)


def _memory(results: Results) -> list[str]:
    lines = [
        "| image | `SNAPARCHIVE_MEMORY_LIMIT` | part size | part buffers | runs "
        "| peak RSS MiB (max) | MB/s, transfer (median) |",
        "|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for run in results.memory:
        m = run.measurement
        rss = _mib(m.peak_rss) if m.measured else "failed"
        lines.append(
            f"| {format_size(run.size)} | {format_size(run.memory_limit)} "
            f"| {format_size(run.part_size)} | {run.buffers} | {len(m.good)}/{len(m.runs)} "
            f"| {rss} | {_rate(m.rate('transfer'))} |"
        )
    return lines


def _memory_notes(results: Results) -> list[str]:
    """What the peak RSS is made of, from the runs."""
    lines = []
    for run in results.memory:
        if (
            run.memory_limit != results.memory_limit
            or not run.measurement.measured
            or run.size < 2 * run.buffers * run.part_size  # too small to fill every buffer
        ):
            continue
        buffers = run.buffers * run.part_size
        rest = run.measurement.peak_rss - buffers
        lines.append(
            f"- {format_size(run.size)}: {run.buffers} part buffers of "
            f"{format_size(run.part_size)} = {_mib(buffers)} MiB (all of them filled in turn), "
            f"plus {_mib(rest)} MiB of everything else (interpreter, aiohttp, boto3 and "
            "botocore's S3 model, threads)."
        )
    if lines:
        lines.append(
            "- The part buffers are what `SNAPARCHIVE_MEMORY_LIMIT` bounds; the process needs "
            "its baseline on top, whatever the image size."
        )
    return lines


def _resume(figure: Resume) -> list[str]:
    if figure.error:
        return [f"The measurement failed: {figure.error}"]
    size = figure.size
    reuploaded = figure.reuploaded_parts
    kept = figure.kept_beyond_checkpoint

    def share(value: int) -> str:
        return f"{format_size(value)} ({value / size:.1%} of the image)"

    return [
        "| | |",
        "|---|--:|",
        f"| image, part size | {format_size(size)}, {format_size(figure.part_size)} |",
        f"| served when the first process was killed | {share(figure.served_at_kill)} |",
        f"| last checkpoint before the kill | {share(figure.checkpoint_offset)} |",
        f"| UploadParts the first process started, saw answered | {len(figure.first_started)}, "
        f"{len(figure.first_done)} |",
        f"| parts the store held at the kill (ListParts) | {len(figure.stored_at_kill)} |",
        "| the resumed process started at | "
        + (
            f"{share(figure.resumed_from)} |"
            if figure.resumed_from is not None
            else "0: nothing was checkpointed before the kill, it started over |"
        ),
        f"| served to the resumed process | {share(figure.served_resume)} |",
        f"| **bytes downloaded again** (served after the kill - the remainder) "
        f"| **{share(figure.redownloaded)}** |",
        f"| **parts uploaded again** (started by the first process, sent by the second) "
        f"| **{len(reuploaded)}: {share(figure.reuploaded)}** |",
        f"| parts stored past the checkpoint, adopted without re-sending "
        f"| {len(kept)}{': ' + ', '.join(map(str, kept)) if kept else ''} |",
        f"| wall time, killed run + resumed run | {figure.first_seconds:.1f} s + "
        f"{figure.second_seconds:.1f} s |",
        "",
        "What is done twice is what the checkpoint did not cover yet: the parts downloaded "
        "past it (the pipeline reads ahead into its free part buffers while earlier parts "
        "upload, up to upload concurrency + 1 parts, plus what sat in socket buffers) are "
        "downloaded again, and the parts whose upload was in flight at the kill are sent "
        "again. Parts the store completed past the checkpoint are found by ListParts, "
        "re-hashed from the new download and kept when their MD5 matches the stored ETag. "
        f"Starting over would have downloaded {share(figure.served_at_kill)} again and "
        f"uploaded every part the first process had started ({len(figure.first_started)}) "
        "again.",
    ]


def _observations(results: Results) -> list[str]:
    """Facts computed from this run that explain the figures."""
    get = results.measurements.get
    lines = []
    busy = [
        f"{_cell(m.label)} {m.server_cpu('moto') / m.median('seconds'):.0%}"
        for m in results.measurements.values()
        if m.store == "moto" and m.measured
    ]
    if busy:
        lines.append(
            "- **Into moto, moto sets the pace**: its server process was on CPU for this share "
            "of each client's wall time (median; the clients and the image server share the "
            "same cores): "
            + "; ".join(busy)
            + ". It is one Python process (Werkzeug, one request per thread, one GIL): it reads "
            "each body into memory, hashes it and writes it to a temporary file, and "
            "CompleteMultipartUpload copies every part once more. A client cannot go faster "
            "than moto ingests, so the ratio into moto compares moto with itself."
        )
    loaded = [
        f"{_cell(m.label)} into {m.store} ({m.median('others_cpu') / m.median('seconds'):.0%})"
        for m in results.measurements.values()
        if m.measured and m.median("others_cpu") > 0.1 * m.median("seconds")
    ]
    if loaded:
        lines.append(
            "- **Other load**: beyond the command and its servers, the machine spent more than "
            "a tenth of a core (median, share of one core) during: " + "; ".join(loaded) + ". "
            "Some of it is the kernel's loopback networking; the rest is another process's "
            "load, which slows those runs."
        )
    null = get("pipeline-null")
    if null is not None and null.measured:
        cpu, seconds = null.median("cpu"), null.median("transfer")
        gib = results.size / (1 << 30)
        lines.append(
            f"- **CPU**: the pipeline into the null sink used {cpu:.1f} CPU s for "
            f"{format_size(results.size)} ({cpu / gib:.1f} s/GiB) in {seconds:.1f} s of "
            f"transfer, on {results.machine.get('cpu', '').rsplit('nproc ', 1)[-1]} cores, "
            "beside the image server and the sink. It hashes every byte twice (the image's MD5 "
            "chain and each part's own MD5, checked against the store's ETag), once more "
            "than `openssl md5`."
        )
        others = [get("rclone-null"), get("aws-null")]
        ratios = [
            f"{null.rate('transfer') / m.rate():.1f}x {_cell(m.label)} ({_rate(m.rate())} MB/s)"
            for m in others
            if m is not None and m.measured
        ]
        if ratios:
            lines.append(
                "- Where the store is no bottleneck (the null sink), the pipeline by transfer "
                "time ran at " + ", ".join(ratios) + "."
            )
    return lines


def render(results: Results) -> str:
    """Return RESULTS.md for ``results``."""
    m = results.machine
    size = format_size(results.size)
    moto_version = results.tools.get("moto", "")
    quick = results.options.get("quick") == "True"
    measurements = [*results.measurements.values(), *(r.measurement for r in results.memory)]
    exact = all(run.rss_exact for m in measurements for run in m.runs)
    lines = [
        "# Benchmark results",
        "",
        "Written by `./dev.sh bench` (`python -m bench.run`, see its docstring); do not edit: "
        "a run rewrites this file.",
        f"This run took {results.duration / 60:.1f} min"
        + (" (**--quick**: small images, not the reference figures)" if quick else "")
        + f", {results.waited:.0f} s of it waiting for other load on the machine to pass.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {label} | {value} |" for label, value in m.items()),
        *(f"| {name} | {version} |" for name, version in results.tools.items()),
        f"| options | {', '.join(f'{k} {v}' for k, v in results.options.items())} |",
        "",
        "## Set-up",
        "",
        f"- **Image**: {size}, generated by the Exoscale simulator (`worker.simulator`: "
        "1 MiB blocks, a quarter of them random, the rest zeros) and served from a presigned "
        "URL over loopback HTTP by the simulator in a process of its own (`bench.imageserver`). "
        "Every command reads the same URL.",
        "- **Pipeline**: `python -m bench.pipeline`, a child process running `archive_export` "
        "(download → MD5 chain → per-part MD5 check → S3 multipart → ListParts check → "
        f"Complete → manifest) with the worker's defaults: part size "
        f"{format_size(results.part_size)}, 4 uploads at once, "
        f"`SNAPARCHIVE_MEMORY_LIMIT={format_size(results.memory_limit)}`. "
        "*Wall* time runs from spawning the process to its exit (it includes about 1 s of "
        "Python start-up, imports and the boto3 client); *transfer* time is the `archive_export` "
        "call alone, the figure for a long-running worker.",
        "- **Null sink** (`bench.sink`): an aiohttp process speaking enough S3 multipart for "
        "the clients, reading every body off the socket and dropping it. It hashes nothing: "
        "UploadPart answers the client's `Content-MD5` (rclone, aws) or the part's MD5 registered "
        "before the run (the pipeline checks every part's ETag against its own MD5, as with any "
        "store).",
        f"- **moto**: `moto_server` {moto_version} in its own process; a fresh bucket per run, "
        "deleted afterwards.",
        "- **Peers** use their defaults, except rclone's `no_head` (rclone 1.60 checks each upload "
        "with `HEAD ?versionId=null`, which moto answers 400, and then retries the whole copy). "
        "An rclone upload in parts carries no MD5 rclone can report, so its check is "
        "`md5sum --download`, a second read. The commands run without `AWS_CA_BUNDLE` (set on "
        "this machine; rclone refuses it for a plain-http endpoint).",
        f"- Throughputs are medians over {results.runs} runs, interleaved (every command once, "
        "then again), in MB/s = 10⁶ bytes/s of image. CPU seconds are the client's own "
        "processes (wait4); the servers' are read from /proc. Peak RSS is `ru_maxrss` of the "
        "largest process, as GNU time reports it for the command it starts. *Other load* is "
        "the machine's CPU time (/proc/stat) beyond the command, the processes it waited for "
        "and its servers; before each "
        "run the benchmark waits (15 min at most in all) until other processes use less than "
        "0.15 of a core"
        + (
            "."
            if exact
            else " (**GNU time is missing here**: the figures come from wait4 and include the "
            "benchmark's own ~60 MiB, which Linux charges to a child at exec)."
        ),
        "",
        "## Throughput",
        "",
        *_throughput(results),
        "",
        "## Targets (issue 3)",
        "",
        *_targets(results),
        "",
        *_observations(results),
        "",
        "## Peak RSS by image size (pipeline into the null sink)",
        "",
        *_memory(results),
        "",
        *_memory_notes(results),
        "",
        "## Killed at 50 % and resumed (issue 5)",
        "",
        f"The pipeline archives the {size} image into moto with a checkpoint file (the job "
        "store's `save_checkpoint` in miniature: `Checkpoint.to_dict()` as JSON after every part "
        "that extends the stored prefix). When the image server has sent half of the image, the "
        "process gets SIGKILL. A new process loads the checkpoint, asks the simulator's API for a "
        "fresh presigned URL and calls `archive_export(checkpoint=...)`, as the "
        "`transfer_snapshot` step does after a worker died. Both processes log every UploadPart.",
        "",
        *(_resume(results.resume) if results.resume else ["Not run (`--no-resume`)."]),
        "",
        *recovery.section(results.recovery),
        "",
        *(restore.render(results.restore) if results.restore else []),
        "## Commands",
        "",
        "`$URL` is the presigned URL; `$ENDPOINT`, `$BUCKET`, `$KEY` the S3 endpoint, a bucket "
        "and a key; rclone's remote `store:` is configured by `RCLONE_CONFIG_STORE_*` variables "
        "(`bench.peers.rclone_env`); the pipeline by `SNAPARCHIVE_S3_ENDPOINT`, "
        "`SNAPARCHIVE_S3_BUCKET`, `SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS` and `EXOSCALE_API_*`.",
        "",
        "```sh",
        *_commands(results),
        "```",
        "",
    ]
    return "\n".join(lines)


def _commands(results: Results) -> list[str]:
    seen: list[str] = []
    for m in results.measurements.values():
        for command in m.commands:
            if command not in seen:
                seen.append(command)
    restores = (
        (restore.OURS, restore.AWS, restore.RCLONE, restore.RCLONE_FILE) if results.restore else ()
    )
    for command in (peers.RCLONE_COPY, peers.RCLONE_MD5, peers.AWS_PIPE, *restores):
        if command not in seen:
            seen.append(command)
    return seen
