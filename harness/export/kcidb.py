"""`pkvm-harness kcidb DIR`: a run (results.json) or a series check
(series.json) as KCIDB I/O data, the JSON KernelCI's database takes.

The file follows kcidb-io's latest schema version and is validated with
kcidb-io's own validator before it is written (a file it rejects is never
written). What goes where:

- checkouts: one per kernel of the run (target x side; for a series check,
  one per patch prefix): source, base commit, the series and its patchset
  hash, validity (the series applied);
- builds: arch arm64, compiler, config (the fragments and the resolved
  .config's sha256), the make command, duration, status, build log;
- tests: one per cell, path `pkvm.<scenario>.<profile>`, with a subtest per
  step (`...<step>`), per kselftest case and per metric (DONE, with its
  number); status from the one verdict policy (verdicts.KCIDB); the console
  log as the log and an output file; environment = the QEMU profile;
- issues and incidents: a failure's signature (scenario, failing step, the
  kernel events it raised, addresses masked) is an issue, blamed on the
  code for a FAIL and on the harness for an ERROR; a declared known gap or
  known failure is an issue too, its incident present for an XFAIL and
  absent for an XPASS.

Files are named by URL: under `--artifact-url` when the directory is
published there, else `file://` (enough for a local dashboard; KCIDB's
submitter wants downloadable URLs)."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kcidb_io

from harness.config import Registry
from harness.errors import ConfigError, HarnessError
from harness.report import RunResult, ScenarioResult, TargetRecord, Verdict, load_results, verdicts
from harness.report.writers import atomic_write

SCHEMA = kcidb_io.schema.LATEST
DEFAULT_ORIGIN = "pkvm_harness"
_ORIGIN = re.compile(r"^[a-z0-9_]+$")
_PATH_PART = re.compile(r"[^A-Za-z0-9_-]+")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-f]{8,16}\b")
_EXCERPT_MAX = 16384


class KcidbError(HarnessError):
    """The data would not validate against kcidb-io's schema (a harness bug)."""


def origin_name(value: str) -> str:
    """argparse type of --origin: KCIDB's origin pattern."""
    if not _ORIGIN.match(value):
        raise argparse.ArgumentTypeError(f"{value!r}: a KCIDB origin is lower-case letters, digits and '_'")
    return value


def path_part(name: str) -> str:
    """One component of a KCIDB test path (letters, digits, '_', '-')."""
    return _PATH_PART.sub("_", name).strip("_") or "_"


def validate(data: dict[str, Any]) -> None:
    """kcidb-io's own validator, on its latest schema version."""
    try:
        SCHEMA.validate(data)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        raise KcidbError(f"KCIDB {SCHEMA}: {where}: {exc.message}") from None


@dataclass
class _Urls:
    """URL of a file of the results directory."""

    root: Path
    base: str | None

    def __call__(self, path: str | Path | None) -> str | None:
        if not path:
            return None
        p = Path(path)
        if not p.is_absolute():
            p = self.root / p
        if self.base is not None:
            try:
                return self.base.rstrip("/") + "/" + str(p.resolve().relative_to(self.root.resolve()))
            except ValueError:
                pass  # outside the directory (a build cache entry): only a local URL names it
        return p.resolve().as_uri()


def _text(s: str, limit: int = _EXCERPT_MAX) -> str:
    s = s.replace("\0", "")
    return s[-limit:] if len(s) > limit else s


def _resource(name: str, url: str | None) -> list[dict[str, str]]:
    return [{"name": name, "url": url}] if url else []


def _run_id(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def patchset_hash(patches: list[bytes]) -> str:
    """KCIDB's patchset hash: sha256 over the newline-terminated sha256 of
    each patch, in order; the empty string for no patch."""
    if not patches:
        return ""
    return hashlib.sha256("".join(hashlib.sha256(p).hexdigest() + "\n" for p in patches).encode()).hexdigest()


def _series_patches(spec: str | None, upto: int | None = None) -> list[bytes] | None:
    """The series' patches as given to git am, when the series is still
    readable where it was (an mbox, a directory); None otherwise."""
    if not spec or ":" not in spec:
        return None
    from harness.config.models import SeriesSpec
    from harness.kernel.series import load_series

    kind, location = spec.split(":", 1)
    if kind == "msgid" or not Path(location).exists():
        return None
    try:
        series = load_series(SeriesSpec(kind, location))  # type: ignore[arg-type]
    except HarnessError:
        return None
    patches = [p.data for p in series.patches]
    return patches[:upto] if upto is not None else patches


def _git_origin(kernel: dict[str, Any]) -> tuple[str | None, str | None]:
    """(repository URL, commit) of a kernel built from `--source URL@REF`,
    read from the build's own reproducer command; a tarball's checkout has
    neither (the harness's commit of an unpacked tarball is not upstream's)."""
    reproducer = kernel.get("reproducer") or {}
    argv = shlex.split(str(reproducer.get("harness", ""))) if isinstance(reproducer, dict) else []
    source = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--source"), "")
    m = re.match(r"^(https://\S+?)(?:@(\S+))?$", source)
    if not m:
        return None, None
    rev = m.group(2)
    return m.group(1), rev if rev and re.fullmatch(r"[0-9a-f]{40}", rev) else None


class Exporter:
    def __init__(self, origin: str, urls: _Urls, run_id: str) -> None:
        self.origin = origin
        self.urls = urls
        self.run_id = run_id
        self.data: dict[str, Any] = {
            "version": {"major": SCHEMA.major, "minor": SCHEMA.minor},
            "checkouts": [],
            "builds": [],
            "tests": [],
            "issues": [],
            "incidents": [],
        }
        self._issues: set[str] = set()

    def oid(self, *parts: str) -> str:
        return f"{self.origin}:{self.run_id}:" + ":".join(parts)

    # ---------------------------------------------------------------- issues

    def issue(self, key: str, comment: str, culprit: str, misc: dict[str, Any]) -> str:
        issue_id = f"{self.origin}:{key}"
        if issue_id not in self._issues:
            self._issues.add(issue_id)
            self.data["issues"].append(
                {
                    "id": issue_id,
                    "version": 0,
                    "origin": self.origin,
                    "comment": _text(comment, 4096),
                    "culprit": {culprit: True},
                    "misc": misc,
                }
            )
        return issue_id

    def incident(
        self,
        issue_id: str,
        present: bool,
        comment: str,
        *,
        test_id: str | None = None,
        build_id: str | None = None,
    ) -> None:
        owner = test_id or build_id
        assert owner is not None
        inc: dict[str, Any] = {
            "id": f"{owner}#{issue_id.split(':', 1)[1]}",
            "origin": self.origin,
            "issue_id": issue_id,
            "issue_version": 0,
            "present": present,
            "comment": _text(comment, 4096),
        }
        if test_id:
            inc["test_id"] = test_id
        if build_id:
            inc["build_id"] = build_id
        self.data["incidents"].append(inc)

    def verdict_issues(self, verdict: Verdict, reason: str, key: str, test_id: str, known_key: str) -> None:
        """The issues a verdict gives: its known issue (present for an XFAIL,
        absent for an XPASS), or the failure's signature (FAIL, ERROR)."""
        present = verdicts.KCIDB_KNOWN_ISSUE_PRESENT[verdict]
        if present is not None:
            # The issue is the declaration (one per gap or listed case, whichever cell
            # comes first); each incident carries its own cell's reason.
            what = known_key.replace(".", " ", 1).replace("-", " ", 1)
            issue = self.issue(
                known_key, f"declared {what}", verdicts.KCIDB_CULPRIT[Verdict.XFAIL], {"kind": "known"}
            )
            self.incident(issue, present, reason, test_id=test_id)
        elif verdict in (Verdict.FAIL, Verdict.ERROR):
            issue = self.issue(
                f"signature.{key}",
                _ADDRESS.sub("…", reason.splitlines()[0] if reason else key),
                verdicts.KCIDB_CULPRIT[verdict],
                {"signature": key, "verdict": str(verdict)},
            )
            self.incident(issue, True, reason, test_id=test_id)

    # ---------------------------------------------------------------- checkouts and builds

    def checkout(
        self,
        key: str,
        tree: str,
        kernel: dict[str, Any],
        valid: bool | None,
        series_spec: str | None,
        upto: int | None,
        extra: dict[str, Any],
    ) -> str:
        cid = self.oid(key)
        source = str(kernel.get("source", ""))
        checkout: dict[str, Any] = {"id": cid, "origin": self.origin, "tree_name": tree}
        url, commit = _git_origin(kernel)
        if url:
            checkout["git_repository_url"] = url
        if commit:
            checkout["git_commit_hash"] = commit
        patches = _series_patches(series_spec, upto)
        if patches is not None:
            checkout["patchset_hash"] = patchset_hash(patches)
        elif series_spec is None:
            checkout["patchset_hash"] = ""
        if valid is not None:
            checkout["valid"] = valid
        series = kernel.get("series") or {}
        misc = {
            "source": source or None,
            "kernel_version": kernel.get("kernel_version"),
            "harness_commit": kernel.get("commit"),  # the harness's own git commit of base (+ series)
            "series": series_spec,
            "series_identity": series.get("identity") if isinstance(series, dict) else None,
            **extra,
        }
        checkout["misc"] = {k: v for k, v in misc.items() if v is not None}
        self.data["checkouts"].append(checkout)
        return cid

    def build(
        self, checkout_id: str, kernel: dict[str, Any], status: str, comment: str = "", log: str | None = None
    ) -> str:
        bid = checkout_id + ":build"
        build: dict[str, Any] = {
            "id": bid,
            "origin": self.origin,
            "checkout_id": checkout_id,
            "architecture": "arm64",
            "status": status,
        }
        if kernel.get("toolchain"):
            build["compiler"] = str(kernel["toolchain"])
        fragments = kernel.get("fragments")
        if fragments:
            build["config_name"] = "+".join(str(f).removesuffix(".config") for f in fragments)
        reproducer = kernel.get("reproducer") or {}
        if isinstance(reproducer, dict) and reproducer.get("make"):
            build["command"] = str(reproducer["make"])
        if kernel.get("build_seconds") is not None:
            build["duration"] = float(kernel["build_seconds"])
        if comment:
            build["comment"] = _text(comment, 4096)
        entry = Path(str(kernel["image"])).parent if kernel.get("image") else None
        log = log or (str(entry / "build.log") if entry and (entry / "build.log").exists() else None)
        if log:
            build["log_url"] = self.urls(log)
        if entry and (entry / "config").exists():
            build["config_url"] = self.urls(entry / "config")
            build["output_files"] = _resource("config", build["config_url"])
        misc = {
            "config_sha256": kernel.get("config_sha256"),
            "warnings": kernel.get("warnings"),
            "cached": kernel.get("cached"),
            "harness": (reproducer or {}).get("harness"),
        }
        build["misc"] = {k: v for k, v in misc.items() if v is not None}
        self.data["builds"].append(build)
        return bid

    # ---------------------------------------------------------------- tests

    def test(self, build_id: str, path: str, status: str, **fields: Any) -> str:
        tid = f"{build_id}:{path}"
        test: dict[str, Any] = {
            "id": tid,
            "origin": self.origin,
            "build_id": build_id,
            "path": path,
            "status": status,
        }
        test.update({k: v for k, v in fields.items() if v not in (None, "", [], {})})
        self.data["tests"].append(test)
        return tid

    def cell(self, build_id: str, r: ScenarioResult, run: RunResult, environment: dict[str, Any]) -> None:
        path = f"pkvm.{path_part(r.scenario)}.{path_part(r.profile)}"
        boot = next((b for b in run.boots if b.id == r.boot), None)
        console = self.urls(r.console_log)
        outputs = _resource("console.log", console)
        if boot is not None:
            for name in ("qemu.log", "qemu-cmdline.sh", "reproduce-boot.sh"):
                if (Path(boot.dir) / name).exists():
                    outputs += _resource(name, self.urls(Path(boot.dir) / name))
        excerpt = writers_event_text(r)
        tid = self.test(
            build_id,
            path,
            verdicts.KCIDB[r.verdict],
            comment=_text(r.reason, 4096),
            duration=round(r.duration_s, 3),
            log_url=console,
            log_excerpt=_text(excerpt) if excerpt else None,
            output_files=outputs,
            environment=environment,
            misc={
                "harness_verdict": str(r.verdict),
                "scenario": r.scenario,
                "profile": r.profile,
                "side": r.side,
                "boot": r.boot,
                "attempts": r.attempts,
                "reproducer": r.reproducer,
            },
        )
        known = f"known-gap.{r.target}.{r.scenario}"
        self.verdict_issues(r.verdict, r.reason, _signature(r), tid, known)
        used = set()
        for s in r.steps:
            sub = f"{path}.{path_part(s.name)}"
            used.add(sub)
            self.test(
                build_id,
                sub,
                verdicts.KCIDB[s.verdict],
                comment=_text(s.reason, 4096),
                duration=round(s.duration_s, 3),
                log_url=console,
                log_excerpt=_text(s.output, 4096) if s.verdict in (Verdict.FAIL, Verdict.ERROR) else None,
                environment=environment,
                misc={
                    "harness_verdict": str(s.verdict),
                    "transport": s.transport,
                    "command": s.command,
                    "exit_status": s.status,
                },
            )
        for c in r.cases:
            sub = f"{path}.{path_part(c.name)}"
            if sub in used:
                sub += "-case"
            used.add(sub)
            ctid = self.test(
                build_id,
                sub,
                verdicts.KCIDB[c.verdict],
                comment=_text(c.reason, 4096),
                log_url=console,
                environment=environment,
                misc={"harness_verdict": str(c.verdict), "case": c.name},
            )
            self.verdict_issues(
                c.verdict, c.reason, f"{r.scenario}/{c.name}", ctid, f"known-failure.{c.name}"
            )
        for name, value in sorted(r.metrics.items()):
            sub = f"{path}.{path_part(name)}"
            if sub in used:
                sub += "-metric"
            number: dict[str, Any] = {"value": value}
            unit = _metric_unit(name)
            if unit:
                number["unit"] = unit
                number["prefix"] = "metric"
            self.test(build_id, sub, "DONE", number=number, environment=environment, misc={"metric": name})


def writers_event_text(r: ScenarioResult) -> str:
    """The failure's kernel events (symbolised when they were), then the reason."""
    if r.verdict not in (Verdict.FAIL, Verdict.ERROR, Verdict.XFAIL):
        return ""
    blocks = []
    for e in r.events:
        trace = e.get("symbolised") or e.get("trace")
        if e.get("severity") != "info" and isinstance(trace, list):
            blocks.append("\n".join(map(str, trace)))
    return "\n\n".join([*blocks, r.reason]).strip()


def _signature(r: ScenarioResult) -> str:
    """A failure's signature, addresses masked: the scenario, its failing
    step and the non-info kernel events (as `series bisect` compares them)."""
    step = next((s.name for s in r.steps if s.verdict in (Verdict.FAIL, Verdict.ERROR)), "")
    events = sorted({str(e.get("signature")) for e in r.events if e.get("severity") != "info"})
    return f"{r.scenario}/{step}:{','.join(events)}" if step or events else f"{r.scenario}:{_reason_kind(r)}"


def _reason_kind(r: ScenarioResult) -> str:
    """The head of a reason without a failing step ("capability probe",
    "build", "machine", "hang"), addresses and numbers masked."""
    head = r.reason.split(":", 1)[0] if r.reason else str(r.verdict)
    return path_part(_ADDRESS.sub("x", head))[:60]


def _metric_unit(name: str) -> str | None:
    for suffix, unit in (("_us", "us"), ("_ms", "ms"), ("_s", "s"), ("_mib_s", "MiB/s")):
        if name.endswith(suffix):
            return unit
    return None


def _environment(profile: str, run: RunResult, reg: Registry | None) -> dict[str, Any]:
    misc: dict[str, Any] = {"profile": profile, "qemu": run.qemu_version}
    comment = f"QEMU profile {profile} ({run.qemu_version})"
    if reg is not None:
        try:
            p = reg.profile(profile)
        except HarnessError:
            p = None
        if p is not None:
            misc.update(
                machine=p.machine,
                cpu=p.cpu,
                smp=p.smp,
                memory_mb=p.memory_mb,
                iommu=p.iommu,
                smmu_stage=p.smmu_stage,
                kvm_mode=p.kvm_mode,
                features=sorted(p.features),
            )
            comment = f"QEMU profile {profile}: {p.description} ({run.qemu_version})"
    return {"comment": comment, "misc": {k: v for k, v in misc.items() if v is not None}}


def _build_status(t: TargetRecord, cells: list[ScenarioResult]) -> tuple[str, str]:
    """A kernel that was built is a PASS; one that was not gives each of its
    cells the verdict of `verdicts.build_failure`, which is the build's."""
    if t.kernel.get("image") or t.kernel.get("commit") or t.kernel.get("lava_job"):
        return "PASS", ""
    if cells:
        worst = min(cells, key=lambda r: verdicts.RANK[r.verdict])
        return verdicts.KCIDB[worst.verdict], worst.reason
    return "MISS", "no cell of this kernel ran"


def export_run(
    directory: Path, origin: str, artifact_url: str | None = None, reg: Registry | None = None
) -> dict[str, Any]:
    run = load_results(directory)
    ex = Exporter(origin, _Urls(directory, artifact_url), _run_id(directory / "results.json"))
    envs: dict[str, dict[str, Any]] = {}
    for t in run.targets:
        cells = [r for r in run.results if r.target == t.name and r.side == t.side]
        key = t.name + (f"@{t.side}" if t.side else "")
        series = t.kernel.get("series") if isinstance(t.kernel.get("series"), dict) else None
        spec = str(series["spec"]) if series and series.get("spec") else None
        applied = not any(r.reason.startswith("series: ") and "does not apply" in r.reason for r in cells)
        cid = ex.checkout(key, t.name, t.kernel, applied, spec, None, {"side": t.side})
        status, why = _build_status(t, cells)
        bid = ex.build(cid, t.kernel, status, why)
        if status in ("FAIL", "ERROR"):
            verdict = Verdict.FAIL if status == "FAIL" else Verdict.ERROR
            issue = ex.issue(
                f"build.{t.name}",
                _ADDRESS.sub("…", why.splitlines()[0] if why else "build failed"),
                verdicts.KCIDB_CULPRIT[verdict],
                {"verdict": str(verdict)},
            )
            ex.incident(issue, True, why, build_id=bid)
        for r in cells:
            env = envs.setdefault(r.profile, _environment(r.profile, run, reg))
            ex.cell(bid, r, run, env)
    return ex.data


def export_series(
    directory: Path, origin: str, artifact_url: str | None = None, reg: Registry | None = None
) -> dict[str, Any]:
    """A series check: a checkout and a build per patch prefix, the
    kconfig, warnings and boot checks as tests (`series.<check>`), and the
    cells of each patch's boot (patch-NN/results.json) under its build."""
    from harness.series.load import load_series_report

    report = load_series_report(directory)
    ex = Exporter(origin, _Urls(directory, artifact_url), _run_id(directory / "series.json"))
    base = dict(report.base)
    spec = report.series
    for p in report.patches:
        checks = {c.check: c for c in p.checks}
        apply = checks.get("apply")
        valid = None if apply is None or apply.verdict == Verdict.NOT_RUN else apply.verdict == Verdict.PASS
        kernel = {**base, "commit": p.commit, "source": base.get("source")}
        extra = {"patch": p.number, "subject": p.subject, "message_id": p.message_id, "author": p.author}
        cid = ex.checkout(f"patch-{p.number:02d}", report.target, kernel, valid, spec, p.number, extra)
        if p.message_id and "@" in p.message_id:
            ex.data["checkouts"][-1]["message_id"] = p.message_id
        if valid is not True:
            continue  # nothing was built from a checkout that does not apply
        build = checks.get("build")
        status = verdicts.KCIDB[build.verdict] if build else "MISS"
        bid = ex.build(
            cid,
            {**kernel, "build_seconds": build.seconds if build else None},
            status,
            build.reason if build else "",
            p.build_log,
        )
        if build is not None and build.verdict in (Verdict.FAIL, Verdict.ERROR):
            issue = ex.issue(
                f"build.{_ADDRESS.sub('x', build.reason.splitlines()[0])[:120]}",
                build.reason.splitlines()[0],
                verdicts.KCIDB_CULPRIT[build.verdict],
                {"verdict": str(build.verdict)},
            )
            ex.incident(issue, True, build.reason, build_id=bid)
        for name in ("kconfig", "warnings", "boot"):
            c = checks.get(name)
            if c is None:
                continue
            tid = ex.test(
                bid,
                f"series.{name}",
                verdicts.KCIDB[c.verdict],
                comment=_text(c.reason, 4096),
                duration=round(c.seconds, 1),
                log_url=ex.urls(p.build_log) if name == "warnings" else None,
                log_excerpt=_text("\n".join(p.new_warnings))
                if name == "warnings" and p.new_warnings
                else None,
                misc={"harness_verdict": str(c.verdict), "patch": p.number},
            )
            ex.verdict_issues(
                c.verdict,
                c.reason,
                f"series.{name}:{_ADDRESS.sub('x', c.reason)[:120]}",
                tid,
                f"series.{name}",
            )
        boots = directory / f"patch-{p.number:02d}"
        if (boots / "results.json").exists():
            run = load_results(boots)
            for r in run.results:
                ex.cell(bid, r, run, _environment(r.profile, run, reg))
    return ex.data


def write_kcidb(
    directory: Path,
    output: Path | None,
    origin: str = DEFAULT_ORIGIN,
    artifact_url: str | None = None,
    reg: Registry | None = None,
) -> Path:
    """The KCIDB file of a run or a series check directory, validated
    before it is written."""
    if (directory / "results.json").exists():
        data = export_run(directory, origin, artifact_url, reg)
    elif (directory / "series.json").exists():
        data = export_series(directory, origin, artifact_url, reg)
    else:
        raise ConfigError(f"kcidb: {directory} holds neither results.json nor series.json")
    validate(data)
    out = output or directory / "kcidb.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(data, indent=2) + "\n")
    return out
