"""The cfncluster 1.6 config file (the INI `cfncluster configure` writes), checked before use.

cfncluster reads it with `configparser.ConfigParser()` and, on most mistakes, prints a line and
calls sys.exit(1) or dies with a traceback (a missing `vpc_settings`, a missing [aws] section,
a `vpc_settings` naming a section that is not there...). This module reads the file the way
configparser does (same comments, delimiters, continuation lines, case rules, duplicate
checks) but with line numbers, and reports every problem at once as `Problem`s. It never
raises on bad input.

What cfncluster 1.6.1 needs (its cfnconfig.py):

    [global]
    cluster_template = default       # which [cluster NAME] is used (unless given)
    update_check = false             # the functions always force false (else an untimed PyPI call)
    sanity_check = false             # optional; true adds AWS look-ups and URL fetches

    [aws]                            # must exist (may be empty)
    aws_region_name = us-east-1      # optional

    [cluster default]
    key_name = mykey                 # optional here: the run provides its own key
    scheduler = slurm                # sge (default) | slurm | torque
    vpc_settings = public            # required -> [vpc public]
    template_url = https://...       # optional

    [vpc public]
    vpc_id = vpc-0123456789abcdef0
    master_subnet_id = subnet-0123456789abcdef0

Credentials (`aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`) are refused
anywhere in the file: the file is copied into the deployment package, and the functions
create clusters with their own IAM role.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field

from stepcluster.config import Problem
from stepcluster.errors import ConfigError

__all__ = [
    "SCHEDULERS",
    "DEFAULT_SCHEDULER",
    "check_cfncluster_config",
    "cfncluster_scheduler",
    "cfncluster_region",
    "config_for_run",
    "read_cfncluster_config",
]

SCHEDULERS = ("sge", "slurm", "torque")
DEFAULT_SCHEDULER = "sge"          # cfncluster's template default
MAX_CONFIG_BYTES = 1024 * 1024
CREDENTIAL_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")

GLOBAL_KEYS = ("cluster_template", "update_check", "sanity_check")
AWS_KEYS = ("aws_region_name",)
# Every [cluster NAME] option cfncluster 1.6.1 reads (cfnconfig.py).
CLUSTER_KEYS = (
    "key_name", "template_url", "vpc_settings", "ebs_settings", "scaling_settings", "tags",
    "cluster_user", "compute_instance_type", "master_instance_type", "initial_queue_size",
    "max_queue_size", "maintain_initial_size", "scheduler", "cluster_type", "ephemeral_dir",
    "spot_price", "custom_ami", "pre_install", "post_install", "proxy_server", "placement",
    "placement_group", "encrypted_ephemeral", "pre_install_args", "post_install_args",
    "s3_read_resource", "s3_read_write_resource", "shared_dir", "tenancy",
    "ephemeral_kms_key_id", "cluster_ready", "master_root_volume_size",
    "compute_root_volume_size", "base_os", "ec2_iam_role", "extra_json",
    "custom_chef_cookbook", "custom_chef_runlist", "additional_cfn_template",
)
VPC_KEYS = ("vpc_id", "master_subnet_id", "compute_subnet_cidr", "compute_subnet_id",
            "use_public_ips", "ssh_from", "access_from", "additional_sg", "vpc_security_group_id")
EBS_KEYS = ("ebs_snapshot_id", "volume_type", "volume_size", "ebs_kms_key_id", "volume_iops",
            "encrypted", "ebs_volume_id")
SCALING_KEYS = ("scaledown_idletime",)

_BOOLEANS = {"1", "yes", "true", "on", "0", "no", "false", "off"}   # configparser.getboolean
_SECTION_RE = re.compile(r"\[(?P<header>.+)\]")                     # configparser.SECTCRE
_OPTION_RE = re.compile(r"(?P<option>.*?)\s*(?P<vi>[=:])\s*(?P<value>.*)$")
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_VPC_RE = re.compile(r"^vpc-[0-9a-f]{8}([0-9a-f]{9})?$")
_SUBNET_RE = re.compile(r"^subnet-[0-9a-f]{8}([0-9a-f]{9})?$")
_ACCESS_KEY_RE = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
_COMMENTED_CRED_RE = re.compile(
    r"(?P<key>aws_access_key_id|aws_secret_access_key|aws_session_token)\s*[=:]\s*(?P<value>.*)$",
    re.I)
_INTERPOLATION_OK = re.compile(r"%%|%\((?P<name>[^)]*)\)s")

_WHY_NO_CREDENTIALS = (
    "AWS credentials must never be in this file: it is copied into the deployment package, and "
    "whatever is in it would be readable by anyone who can read the functions' code or "
    "parameters. The functions create clusters with their own IAM role; remove this line")


# --------------------------------------------------------------------------------------------
# Reading the file the way configparser does, with line numbers


@dataclass
class _Option:
    section: str
    raw_key: str
    key: str               # lower-cased, as configparser.optionxform does
    first_value: str
    line: int              # 1-based line of `key = value`
    end: int               # last line belonging to it (continuation lines)
    indent: str
    continuation: list[str] = field(default_factory=list)

    @property
    def value(self) -> str:
        return "\n".join([self.first_value, *self.continuation]).strip()


@dataclass
class _Section:
    name: str
    line: int
    options: dict[str, _Option] = field(default_factory=dict)


@dataclass
class CfnClusterIni:
    """The parsed file: sections in order, with the lines they came from."""

    path: str
    text: str
    lines: list[str]
    sections: dict[str, _Section]
    problems: list[Problem]
    comments: list[tuple[int, str]]

    def option(self, section: str, key: str) -> _Option | None:
        sect = self.sections.get(section)
        if sect is not None and key in sect.options:
            return sect.options[key]
        default = self.sections.get("DEFAULT")   # configparser: [DEFAULT] feeds every section
        if default is not None and section in self.sections:
            return default.options.get(key)
        return None

    def value(self, section: str, key: str) -> str | None:
        opt = self.option(section, key)
        return None if opt is None else opt.value

    def cluster_section(self, cluster_template: str | None = None) -> str | None:
        name = cluster_template or self.value("global", "cluster_template")
        return f"cluster {name}" if name else None


def _read_text(path: str) -> tuple[str | None, Problem | None]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None, Problem(str(path), None, None, None, "cfncluster config file not found")
    except OSError as exc:
        return None, Problem(str(path), None, None, None,
                             f"cannot read the cfncluster config: {exc.strerror or exc}")
    if len(data) > MAX_CONFIG_BYTES:
        return None, Problem(str(path), None, None, None,
                             "not a cfncluster config file: larger than 1 MiB")
    if b"\x00" in data:
        return None, Problem(str(path), None, None, None,
                             "not a text file (it contains NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        return None, Problem(str(path), line, None, None, "not UTF-8 text")
    return text, None


def _parse(path: str, text: str) -> CfnClusterIni:
    lines = text.splitlines(keepends=True)
    sections: dict[str, _Section] = {}
    problems: list[Problem] = []
    comments: list[tuple[int, str]] = []
    cursect: _Section | None = None
    curopt: _Option | None = None
    indent_level = 0
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        stripped = line.strip()
        if stripped.startswith(("#", ";")):
            comments.append((number, stripped))
            continue
        if not stripped:
            continue                              # a blank line does not end a value (configparser)
        indent = len(line) - len(line.lstrip())
        if cursect is not None and curopt is not None and indent > indent_level:
            curopt.continuation.append(stripped)
            curopt.end = number
            continue
        indent_level = indent
        match = _SECTION_RE.match(stripped)
        if match:
            name = match.group("header")
            curopt = None
            if name in sections:
                problems.append(Problem(path, number, name, None,
                                        f"section [{name}] appears twice (first on line "
                                        f"{sections[name].line}); cfncluster refuses the file"))
                cursect = sections[name]
            else:
                cursect = sections[name] = _Section(name, number)
            continue
        if cursect is None:
            problems.append(Problem(path, number, None, None,
                                    "text before the first [section] header; cfncluster refuses "
                                    "the file"))
            continue
        match = _OPTION_RE.match(stripped)
        if not match or not match.group("option").strip():
            problems.append(Problem(path, number, cursect.name, None,
                                    f"not a `key = value` line: {stripped[:60]!r}"))
            curopt = None
            continue
        raw_key = match.group("option").strip()
        key = raw_key.lower()
        if key in cursect.options:
            problems.append(Problem(path, number, cursect.name, key,
                                    f"set twice in this section (first on line "
                                    f"{cursect.options[key].line}); cfncluster refuses the file"))
        curopt = _Option(cursect.name, raw_key, key, match.group("value").strip(), number, number,
                         line[:indent])
        cursect.options[key] = curopt
    return CfnClusterIni(path, text, lines, sections, problems, comments)


def read_cfncluster_config(path) -> tuple[CfnClusterIni | None, list[Problem]]:
    """The parsed file and the problems met reading it (None if it could not be read)."""
    text, problem = _read_text(path)
    if problem is not None:
        return None, [problem]
    ini = _parse(str(path), text)
    return ini, list(ini.problems)


# --------------------------------------------------------------------------------------------
# Checks


def check_cfncluster_config(path, *, cluster_template: str | None = None) -> list[Problem]:
    """Every problem in a cfncluster 1.6 config (errors and warnings), sorted by line."""
    path = str(path)
    ini, problems = read_cfncluster_config(path)
    if ini is None:
        return problems
    problems += _credential_problems(ini)
    problems += _interpolation_problems(ini)

    def err(line, section, key, message, severity="error"):
        problems.append(Problem(path, line, section, key, message, severity))

    # [global]
    glob = ini.sections.get("global")
    if glob is None and not cluster_template:
        err(None, "global", None, "missing [global] section (cfncluster reads cluster_template "
                                  "from it)")
    if glob is not None:
        _unknown_keys(ini, glob, GLOBAL_KEYS, problems)
        for key in ("sanity_check", "update_check"):
            opt = glob.options.get(key)
            if opt is not None and opt.value.lower() not in _BOOLEANS:
                err(opt.line, "global", key, f"must be true or false, got {opt.value!r}")
        opt = glob.options.get("sanity_check")
        if opt is not None and opt.value.lower() in ("1", "yes", "true", "on"):
            err(opt.line, "global", "sanity_check",
                "true: cfncluster then also looks up every resource (the functions' role needs "
                "more permissions) and fetches template_url/pre_install/post_install URLs "
                "without a timeout", "warning")

    template = cluster_template or ini.value("global", "cluster_template")
    if glob is not None and not cluster_template:
        opt = glob.options.get("cluster_template")
        if opt is None:
            err(glob.line, "global", "cluster_template",
                "missing: it names the [cluster NAME] section to use")
        elif not opt.value:
            err(opt.line, "global", "cluster_template", "is empty")

    # [aws]
    aws = ini.sections.get("aws")
    if aws is None:
        err(None, "aws", None, "missing [aws] section: cfncluster needs it, even empty")
    else:
        _unknown_keys(ini, aws, AWS_KEYS + CREDENTIAL_KEYS, problems)
        opt = aws.options.get("aws_region_name")
        if opt is not None and not _REGION_RE.match(opt.value):
            err(opt.line, "aws", "aws_region_name",
                f"is not an AWS region name (like us-east-1): {opt.value!r}")

    # [cluster NAME]
    if template:
        section = f"cluster {template}"
        cluster = ini.sections.get(section)
        if cluster is None:
            ref = None if cluster_template else ini.option("global", "cluster_template")
            err(ref.line if ref else None, "global" if ref else None,
                "cluster_template" if ref else None,
                f"names [{section}], which is not in the file" + _did_you_mean(section, ini))
        else:
            _check_cluster(ini, cluster, problems)
    return sorted(problems, key=lambda p: (p.line or 0, p.severity != "error"))


def _check_cluster(ini: CfnClusterIni, cluster: _Section, problems: list[Problem]) -> None:
    path, name = ini.path, cluster.name

    def err(line, key, message, severity="error", section=name):
        problems.append(Problem(path, line, section, key, message, severity))

    _unknown_keys(ini, cluster, CLUSTER_KEYS, problems)
    _empty_values(ini, cluster, problems)
    scheduler = cluster.options.get("scheduler")
    if scheduler is not None and scheduler.value and scheduler.value not in SCHEDULERS:
        err(scheduler.line, "scheduler",
            f"must be one of {', '.join(SCHEDULERS)} (lower case), got {scheduler.value!r}")
    url = cluster.options.get("template_url")
    if url is not None and url.value and not url.value.startswith("https://"):
        err(url.line, "template_url",
            f"must be an https:// URL of the template in S3 (CloudFormation refuses other "
            f"schemes), got {url.value!r}")
    user = cluster.options.get("cluster_user")
    if user is not None and url is None:
        err(user.line, "cluster_user",
            "cfncluster passes it as the ClusterUser parameter, which its default template does "
            "not declare: CloudFormation would refuse the stack", "warning")
    tags = cluster.options.get("tags")
    if tags is not None and tags.value:
        try:
            parsed = json.loads(tags.value)
        except ValueError as exc:
            parsed = None
            err(tags.line, "tags", f"must be a JSON object like {{\"key\": \"value\"}}: {exc}")
        else:
            if not isinstance(parsed, dict):
                err(tags.line, "tags", 'must be a JSON object like {"key": "value"}')

    vpc = cluster.options.get("vpc_settings")
    if vpc is None:
        err(cluster.line, "vpc_settings",
            "missing: it names the [vpc NAME] section with vpc_id and master_subnet_id")
    elif vpc.value:
        section = ini.sections.get(f"vpc {vpc.value}")
        if section is None:
            err(vpc.line, "vpc_settings",
                f"names [vpc {vpc.value}], which is not in the file"
                + _did_you_mean(f"vpc {vpc.value}", ini))
        else:
            _check_vpc(ini, section, problems)

    for ref_key, word, keys in (("ebs_settings", "ebs", EBS_KEYS),
                                ("scaling_settings", "scaling", SCALING_KEYS)):
        ref = cluster.options.get(ref_key)
        if ref is None or not ref.value:
            continue
        section = ini.sections.get(f"{word} {ref.value}")
        if section is None:
            err(ref.line, ref_key, f"names [{word} {ref.value}], which is not in the file"
                + _did_you_mean(f"{word} {ref.value}", ini))
        else:
            _unknown_keys(ini, section, keys, problems)
            _empty_values(ini, section, problems)


def _check_vpc(ini: CfnClusterIni, vpc: _Section, problems: list[Problem]) -> None:
    def err(line, key, message):
        problems.append(Problem(ini.path, line, vpc.name, key, message))

    _unknown_keys(ini, vpc, VPC_KEYS, problems)
    _empty_values(ini, vpc, problems)
    for key, pattern, example in (("vpc_id", _VPC_RE, "vpc-0123456789abcdef0"),
                                  ("master_subnet_id", _SUBNET_RE, "subnet-0123456789abcdef0")):
        opt = vpc.options.get(key)
        if opt is None:
            err(vpc.line, key, f"missing (like {key} = {example})")
        elif opt.value and not pattern.match(opt.value):
            err(opt.line, key, f"is not an id like {example}: {opt.value!r}")
    opt = vpc.options.get("use_public_ips")
    if opt is not None and opt.value and opt.value not in ("true", "false"):
        err(opt.line, "use_public_ips", f"must be true or false, got {opt.value!r}")


def _empty_values(ini: CfnClusterIni, section: _Section, problems: list[Problem]) -> None:
    for opt in section.options.values():
        if not opt.value and opt.key not in CREDENTIAL_KEYS:
            problems.append(Problem(ini.path, opt.line, section.name, opt.key,
                                    "is empty: cfncluster stops on an option set to nothing; "
                                    "give a value or remove the line"))


def _unknown_keys(ini: CfnClusterIni, section: _Section, known, problems: list[Problem]) -> None:
    for opt in section.options.values():
        if opt.key not in known:
            hint = difflib.get_close_matches(opt.key, known, n=1)
            problems.append(Problem(
                ini.path, opt.line, section.name, opt.key,
                "is not an option cfncluster 1.6 reads here (ignored)"
                + (f"; did you mean {hint[0]!r}?" if hint else ""), "warning"))


def _did_you_mean(section: str, ini: CfnClusterIni) -> str:
    hint = difflib.get_close_matches(section, list(ini.sections), n=1)
    return f"; did you mean [{hint[0]}]?" if hint else ""


def _credential_problems(ini: CfnClusterIni) -> list[Problem]:
    """Credentials anywhere: as options, in comments, or an access key id inside any value."""
    problems = []
    flagged_lines = set()
    for section in ini.sections.values():
        for opt in section.options.values():
            if opt.key in CREDENTIAL_KEYS:
                problems.append(Problem(ini.path, opt.line, section.name, opt.key,
                                        _WHY_NO_CREDENTIALS))
                flagged_lines.add(opt.line)
    for number, comment in ini.comments:
        match = _COMMENTED_CRED_RE.search(comment)
        if not match:
            continue
        value = match.group("value").strip()
        # cfncluster's example config carries placeholders like `#aws_access_key_id = #your_...`
        if value and not value.startswith(("#", "<", "your")):
            problems.append(Problem(ini.path, number, None, match.group("key").lower(),
                                    "commented out, but still in the file: " + _WHY_NO_CREDENTIALS))
            flagged_lines.add(number)
    for number, line in enumerate(ini.lines, 1):
        if number not in flagged_lines and _ACCESS_KEY_RE.search(line):
            problems.append(Problem(ini.path, number, None, None,
                                    "looks like an AWS access key id. " + _WHY_NO_CREDENTIALS))
    return problems


def _interpolation_problems(ini: CfnClusterIni) -> list[Problem]:
    """configparser's default interpolation: a lone % makes cfncluster die with a traceback."""
    problems = []
    for section in ini.sections.values():
        for opt in section.options.values():
            value = opt.value
            for match in _INTERPOLATION_OK.finditer(value):
                name = match.group("name")
                if name is not None and ini.option(section.name, name.lower()) is None:
                    problems.append(Problem(ini.path, opt.line, section.name, opt.key,
                                            f"refers to %({name})s, which is not set in this "
                                            f"section (write %% for a literal %)"))
            if "%" in _INTERPOLATION_OK.sub("", value):
                problems.append(Problem(ini.path, opt.line, section.name, opt.key,
                                        "contains a lone %: cfncluster reads this file with "
                                        "configparser interpolation; write %% for a literal %"))
    return problems


def _raise_on_errors(problems: list[Problem]) -> None:
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ConfigError(errors)


def cfncluster_scheduler(path, *, cluster_template: str | None = None) -> str:
    """The scheduler the config's cluster uses (sge when not set); ConfigError if invalid."""
    problems = check_cfncluster_config(path, cluster_template=cluster_template)
    _raise_on_errors(problems)
    ini, _ = read_cfncluster_config(path)
    return ini.value(ini.cluster_section(cluster_template), "scheduler") or DEFAULT_SCHEDULER


def cfncluster_region(path) -> str | None:
    """The config's [aws] aws_region_name, or None when not set (or unreadable)."""
    ini, _ = read_cfncluster_config(path)
    return None if ini is None else (ini.value("aws", "aws_region_name") or None)


# --------------------------------------------------------------------------------------------
# The copy a run hands to cfncluster


def config_for_run(ini: CfnClusterIni, *, key_name: str | None,
                   cluster_template: str | None = None) -> str:
    """The file's text with `update_check = false` in [global] and, when given, `key_name` of
    the used [cluster NAME] section replaced; every other line is kept as it was."""
    lines = list(ini.lines)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += newline
    edits: list[tuple[int, int, list[str]]] = []      # (first line, last line, replacement), 1-based

    def set_option(section_name: str, key: str, value: str, create_section: bool) -> None:
        value = value.replace("%", "%%")               # configparser interpolation
        section = ini.sections.get(section_name)
        if section is None:
            if create_section:
                edits.append((1, 0, [f"[{section_name}]{newline}", f"{key} = {value}{newline}"]))
            return
        opt = section.options.get(key)
        if opt is None:
            edits.append((section.line + 1, section.line, [f"{key} = {value}{newline}"]))
        else:
            edits.append((opt.line, opt.end, [f"{opt.indent}{opt.raw_key} = {value}{newline}"]))

    set_option("global", "update_check", "false", create_section=True)
    section = ini.cluster_section(cluster_template)
    if key_name and section:
        set_option(section, "key_name", key_name, create_section=False)
    for first, last, replacement in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[first - 1:last] = replacement
    return "".join(lines)
