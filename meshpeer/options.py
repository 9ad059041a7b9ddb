"""Every option of meshpeer's two processes, declared once.

The controller shard (``ryu_apps.controller``, section ``[controller]``) and the on-host
controller (``ohc.app``, section ``[ohc]``) read their options from an oslo config file (or the
same names on the command line, e.g. ``--ohc-host hv1``). From these declarations come: what
``meshpeer-manager`` registers (so ``--help`` lists them), the config files the lab and the tests
write (:func:`config_text`), the apps' required-option check (:func:`missing`) and
docs/configuration.md (:func:`markdown`, checked by a unit test so the doc cannot drift).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshpeer.rest.admission import Limits
from meshpeer.streaming.publisher import DEFAULT_MAX_CHANNEL_SUBSCRIPTIONS

Value = str | int | float | bool


@dataclass(frozen=True)
class Option:
    name: str
    kind: type[str] | type[int] | type[float] | type[bool]
    help: str
    default: Value | None = None
    required: bool = False
    secret: bool = False


@dataclass(frozen=True)
class Section:
    name: str
    what: str
    options: tuple[Option, ...]

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


_LIMITS = Limits()  # the defaults of the connection limits and timeouts

CONTROLLER = Section(
    "controller",
    "a controller shard: `meshpeer-manager ryu_apps.controller --config-file ctl1.conf`",
    (
        Option("shard", str, "this shard's name in the shard directory", required=True),
        Option("listen_host", str, "address the REST API listens on", "127.0.0.1"),
        Option("listen_port", int, "port the REST API listens on", 8080),
        Option(
            "store",
            str,
            "where the intent lives: `sqlite` (the file `store_path`, one machine) or `etcd` "
            "(the cluster at `etcd_endpoints`: shards on several machines, docs/store.md)",
            "sqlite",
        ),
        Option("store_path", str, "SQLite file holding this shard's intent (`store = sqlite`)"),
        Option(
            "etcd_endpoints",
            str,
            "comma-separated client URLs of the etcd members (`store = etcd`), tried in turn",
        ),
        Option(
            "etcd_prefix",
            str,
            "etcd key prefix of this deployment; the shard's intent is under "
            "`<prefix>shards/<shard>/store/`",
            "/meshpeer/",
        ),
        Option(
            "replica",
            str,
            "this process's name among the replicas of its shard (`store = etcd`: one leads, "
            "the others stand by and answer 503 naming the leader; none: the shard's name)",
        ),
        Option(
            "advertise_url",
            str,
            "the URL other shards and hosts reach this replica at when it leads (none: "
            "http(s)://listen_host:listen_port)",
        ),
        Option(
            "leader_ttl",
            float,
            "seconds of the leader's etcd lease, a whole number >= 1 (etcd's unit): a leader "
            "gone (killed, cut off) is replaced within about this long",
            2.0,
        ),
        Option(
            "etcd_ca_file",
            str,
            "PEM CA certificates that verify https:// `etcd_endpoints` (none: the system's "
            "trust store, its CA file or else its directory; none found: the shard does not "
            "start)",
        ),
        Option(
            "etcd_cert_file",
            str,
            "PEM client certificate (chain) this shard presents to https:// `etcd_endpoints` "
            "(etcd's `--client-cert-auth`); with `etcd_key_file` (none: no client certificate)",
        ),
        Option(
            "etcd_key_file",
            str,
            "PEM private key of `etcd_cert_file`",
        ),
        Option(
            "api_token",
            str,
            "operator admin token of the REST API (everything but federation)",
            required=True,
            secret=True,
        ),
        Option(
            "readonly_token",
            str,
            "operator read-only token: GETs and own-shard streams only (none: no such token)",
            secret=True,
        ),
        Option(
            "api_tokens",
            str,
            "more operator admin tokens, comma-separated, each valid like `api_token` (rotation "
            "without downtime: add the new one, move the clients, drop the old one)",
            secret=True,
        ),
        Option(
            "readonly_tokens",
            str,
            "more operator read-only tokens, comma-separated, each valid like `readonly_token`",
            secret=True,
        ),
        Option(
            "operator_tokens_file",
            str,
            "YAML file `{admin: [..], readonly: [..]}` of more operator tokens, valid beside "
            "the ones above and re-read when it changes (`directory_check_interval`): "
            "rotation without a restart. A file that does not parse is refused whole",
        ),
        Option(
            "revoked_hosts",
            str,
            "comma-separated host names this shard refuses; the directory's `revoked_hosts` "
            "is refused by every shard and taken without a restart (docs/security.md)",
        ),
        Option(
            "directory_file",
            str,
            "YAML shard directory shared by every shard; with `store = etcd` its `shards` only "
            "seed etcd's directory (once, if it was never seeded), which every shard follows "
            "(docs/store.md), and its secrets "
            "stay here",
            required=True,
        ),
        Option(
            "directory_check_interval",
            float,
            "seconds between looks at `directory_file` (a change to its `host_keys` or "
            "`revoked_hosts` is taken without a restart; the rest needs a restart), "
            "`operator_tokens_file` and `tls_cert_file`/`tls_key_file` (0: never)",
            2.0,
        ),
        Option("heartbeat_interval", float, "seconds between heartbeats on each stream", 5.0),
        Option("grant_ttl", float, "seconds a minted grant stays valid (at least)", 3600.0),
        Option("tick_interval", float, "seconds between re-mints of grants", 30.0),
        Option(
            "bgp_port",
            int,
            "TCP port of the shard's BGP speaker, started with the first endpoint that has a"
            " `bgp` session (docs/routing.md)",
            179,
        ),
        Option("bgp_listen_host", str, "address the BGP speaker listens on", "0.0.0.0"),
        Option(
            "bgp_router_id",
            str,
            "the BGP speaker's router id, an IPv4 address (none: listen_host if IPv4, else the"
            " first session's local_ip)",
        ),
        Option(
            "bgp_asn",
            int,
            "the speaker's own AS number; each session speaks with its VPC's `asn`",
            64512,
        ),
        Option(
            "max_connections",
            int,
            "concurrent REST connections in total, capped at the fd limit minus 2048; a new "
            "connection beyond it closes the oldest idle one, or is answered 503",
            _LIMITS.max_connections,
        ),
        Option(
            "max_connections_per_client",
            int,
            "concurrent REST connections from one client address (an OHC holds one per "
            "subscription); beyond it: that client's oldest idle one is closed, or 503",
            _LIMITS.max_connections_per_client,
        ),
        Option(
            "max_channel_subscriptions",
            int,
            "subscriptions one channel (`GET /v1/channel`) may carry; a subscribe entry beyond"
            " it is answered 429 naming `subscribe[i]` (docs/protocol.md)",
            DEFAULT_MAX_CHANNEL_SUBSCRIPTIONS,
        ),
        Option(
            "idle_timeout",
            float,
            "seconds a REST connection may wait for a request (new or kept alive) before it "
            "is closed; a streaming response is never idle",
            _LIMITS.idle_timeout,
        ),
        Option(
            "header_timeout",
            float,
            "seconds from a request's first byte to the end of its headers (408, closed)",
            _LIMITS.header_timeout,
        ),
        Option(
            "body_timeout",
            float,
            "seconds from the end of a request's headers to the end of its body (408, closed)",
            _LIMITS.body_timeout,
        ),
        Option(
            "tls_cert_file",
            str,
            "PEM certificate (chain) of the REST API; with `tls_key_file` the shard serves "
            "HTTPS only (none: plain HTTP). Loaded again when it or the key changes "
            "(`directory_check_interval`): new connections get it, open ones keep theirs",
        ),
        Option("tls_key_file", str, "PEM private key of `tls_cert_file` (keep it mode 0600)"),
        Option(
            "ca_file",
            str,
            "PEM CA certificates that verify the other shards' certificates (federation over "
            "https://; none: the system's trust store); re-read by the next connection after "
            "it changes",
        ),
        Option(
            "check_answers",
            bool,
            "tests: check every REST answer against the OpenAPI document (a mismatch is a 500)",
            False,
        ),
    ),
)

OHC = Section(
    "ohc",
    "an on-host controller: `meshpeer-manager ohc.app --config-file hv1.conf "
    "--ofp-switch-address-list 127.0.0.1:6653`",
    (
        Option("host", str, "this host's name", required=True),
        Option("underlay_ip", str, "this host's underlay (tunnel endpoint) address", required=True),
        Option(
            "role",
            str,
            "hypervisor (runs endpoints) or gateway (forwards between hosts, docs/gateways.md):"
            " registered with every shard",
            "hypervisor",
        ),
        Option(
            "api_token",
            str,
            "this host's own credential (`mph1.<host>...`, docs/security.md)",
            required=True,
            secret=True,
        ),
        Option(
            "directory_file",
            str,
            "the bootstrap shard directory (YAML, no secrets): at least this host's own shard, "
            'listed first; the OHC learns the others from it (docs/protocol.md, "Directory")',
            required=True,
        ),
        Option(
            "ca_file",
            str,
            "PEM CA certificates that verify the shards' certificates (https:// URLs in the "
            "directory; none: the system's trust store); re-read by the next connection after "
            "it changes (old and new CA in one file during a rotation)",
        ),
        Option(
            "ovsdb", str, "OVSDB of the local switch, e.g. unix:/run/.../db.sock", required=True
        ),
        Option("status_file", str, "where to write a JSON status after each sync (none: no file)"),
        Option("canary_interval", float, "seconds between checks for an OVS restart", 2.0),
        Option(
            "bfd_interval_ms",
            int,
            "a hypervisor's BFD transmit and receive interval toward each gateway, in ms: a "
            "dead gateway leaves the select group after 3 intervals (docs/gateways.md)",
            100,
        ),
        Option(
            "offload_interval",
            float,
            "seconds between two readings of the on-demand pair counters (docs/gateways.md)",
            1.0,
        ),
        Option(
            "offload_pps",
            float,
            "an on-demand pair at this rate (packets/s between two readings) or more goes direct",
            50.0,
        ),
        Option(
            "offload_idle_s",
            int,
            "an offloaded pair under 1 packet/s (or not seen) this many seconds goes back to "
            "the gateways; also the idle timeout of the switch's pair counters",
            10,
        ),
        Option(
            "spillover_interval",
            float,
            "seconds between two readings of the local backends' load of each ILB with "
            "spillover backends (docs/gateways.md, overload shift); more than 0",
            1.0,
        ),
        Option(
            "spillover_high_pps",
            float,
            "an ILB whose local backends get more than this (packets/s per local backend, as "
            "this host sends them) shifts a share of its new connections to its spillover "
            "backends",
            200.0,
        ),
        Option(
            "spillover_low_pps",
            float,
            "an ILB whose demand stayed under this (packets/s per local backend) for "
            "`spillover_hold_s` shifts its new connections back to the local backends; 0 or "
            "more, under `spillover_high_pps`",
            100.0,
        ),
        Option(
            "spillover_hold_s",
            float,
            "seconds the demand must stay under `spillover_low_pps` before the shift back",
            10.0,
        ),
        Option(
            "spillover_max_share",
            int,
            "at most this percentage of an ILB's new connections goes to its spillover backends "
            "(0..99: the local backends always keep a share)",
            80,
        ),
        Option(
            "spillover_affinity_s",
            int,
            "idle timeout of the switch's per-connection affinity flows of ILBs with spillover "
            "backends: a connection idle this long may pick another backend; 1 or more",
            60,
        ),
        Option(
            "metrics_port",
            int,
            "port of the OHC's Prometheus `GET /metrics` (docs/metrics.md; 0: not served)",
            0,
        ),
        Option("metrics_host", str, "address `metrics_port` listens on", "127.0.0.1"),
    ),
)

SECTIONS = (CONTROLLER, OHC)


def missing(section: Section, values: Mapping[str, object]) -> list[str]:
    """The required options of ``section`` that ``values`` leaves empty."""
    return [o.name for o in section.options if o.required and not values.get(o.name)]


def config_text(section: Section, values: Mapping[str, Value | None]) -> str:
    """One section of a config file. Unknown names, wrong types and missing required options
    are refused here, by the writer, rather than at the process's start; None leaves an option
    to its default."""
    errors = [f"{section.name}.{k}: unknown option" for k in values if section.option(k) is None]
    for name, value in values.items():
        opt = section.option(name)
        if opt is not None and value is not None and not _fits(opt, value):
            errors.append(f"{section.name}.{name}: want {opt.kind.__name__}, got {value!r}")
    errors += [f"{section.name}.{n}: required" for n in missing(section, values)]
    if errors:
        raise ValueError("; ".join(errors))
    lines = [f"[{section.name}]"]
    lines += [f"{k} = {_text(v)}" for k, v in values.items() if v is not None]
    return "\n".join([*lines, ""])


def markdown() -> str:
    """docs/configuration.md's option tables."""
    out: list[str] = []
    for s in SECTIONS:
        out += [f"### `[{s.name}]`: {s.what}", ""]
        out += ["| option | type | default | what |", "|---|---|---|---|"]
        for o in s.options:
            default = "required" if o.required else ("-" if o.default is None else f"`{o.default}`")
            what = o.help + (" (secret: never logged)" if o.secret else "")
            out.append(f"| `{o.name}` | {o.kind.__name__} | {default} | {what} |")
        out.append("")
    return "\n".join(out)


def _fits(opt: Option, value: Value) -> bool:
    if opt.kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if opt.kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, opt.kind)


def _text(value: Value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


if __name__ == "__main__":
    print(markdown(), end="")
