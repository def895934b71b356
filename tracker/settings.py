"""One typed settings object for the whole service, built from the environment once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tracker.apikeys import KeyRing, parse_api_keys
from tracker.clientip import Network, parse_networks
from tracker.rates import Rate, parse_rate
from tracker.redis_client import is_cluster, parse_cluster_url

# the default rate limits: never met by a visitor or a backend at work (README, Configuration)
DEFAULT_RATE_TRACK = Rate(burst=2000, per_second=100.0)  # 2000/20s
DEFAULT_RATE_API = Rate(burst=3000, per_second=100.0)  # 3000/30s

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Everything configurable; SPEC §7 names the environment variables."""

    redis_url: str | None = None  # None: start an embedded redis-server
    database_url: str | None = None  # None: SQLite under var_dir
    api_keys: tuple[str, ...] = ("dev-key",)  # entries as tracker.apikeys reads them: [sha256:]KEY[:SCOPE+...]
    host: str = "127.0.0.1"
    port: int = 8080
    anon_ttl_days: int = 30
    anon_ttl_s: int | None = None  # ANON_TTL_SECONDS: overrides the days (soak benchmarks, tests)
    allowed_origins: tuple[str, ...] = ("*",)
    var_dir: Path = Path("var")
    static_dir: Path = STATIC_DIR
    # beacon limits (SPEC §2)
    max_body_bytes: int = 64 * 1024
    max_events: int = 100
    max_string_bytes: int = 2 * 1024
    max_props_bytes: int = 8 * 1024
    history_cap: int = 10_000  # events kept per anonymous visitor
    rejected_cap: int = 100_000  # entries kept in the rejected-events stream
    partitions: int = 1024  # visitor partitions = Redis hash tags (DESIGN invariant 7)
    redis_timeout: float = 1.0  # seconds before a beacon gives up and answers 503
    beacon_log_sample: float = 0.01  # the share of good beacons that write a request line (errors always do)
    placeholders: tuple[str, ...] | None = None  # None: the identity rules' own list (SPEC §1)
    default_phone_region: str | None = None
    worker_enabled: bool = True
    log_json: bool | None = None  # None: JSON when stderr is not a terminal
    # what GET /api/v1/account/info answers (plugins call it to check an API key)
    organisation_name: str = "Stitcher"
    user_email: str | None = None
    org_id: int = 1
    stitch_pause_ms: int = 0  # test hook: pause between claim and insert (crash tests)
    held_event_ttl_days: int = 30  # API events for people not yet known wait this long (and resends are no-ops)
    import_chunk_rows: int = 1000  # rows of a bulk import per transaction
    import_parse_workers: int = 1  # processes parsing import rows beside the service (0: parse in it)
    smtp_url: str | None = None  # smtp[s]://user:password@host:port: the delivery worker sends queued email there
    sms_webhook_url: str | None = None  # the delivery worker posts queued SMS there (else they stay queued)
    send_receipt_ttl_days: int = 7  # an Idempotency-Key send's receipt is kept this long (a repeat sends nothing)
    # IDENTIFY_SECRET: HMAC keys of signed identify, the current first (two during a rotation); empty: off
    identify_secrets: tuple[str, ...] = field(default=(), repr=False)
    # rate limits (tracker.ratelimit): None is no limit
    rate_limit_track: Rate | None = DEFAULT_RATE_TRACK  # per client address: POST /t and GET /t.gif
    rate_limit_api: Rate | None = DEFAULT_RATE_API  # per API key: /api/*
    trusted_proxies: tuple[Network, ...] = ()  # peers whose X-Forwarded-For names the client
    extra: Mapping[str, str] = field(default_factory=dict)
    key_ring: KeyRing = field(init=False, repr=False, compare=False)  # api_keys, parsed

    def __post_init__(self) -> None:
        # parsed here, so that a malformed entry stops the start with a message naming it
        object.__setattr__(self, "key_ring", KeyRing(parse_api_keys(self.api_keys)))

    @property
    def anon_ttl_seconds(self) -> int:
        return self.anon_ttl_s if self.anon_ttl_s else self.anon_ttl_days * 86_400

    @property
    def held_event_ttl_ms(self) -> int:
        return self.held_event_ttl_days * 86_400_000

    @property
    def send_receipt_ttl_ms(self) -> int:
        return self.send_receipt_ttl_days * 86_400_000

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.var_dir / 'stitcher.db').resolve()}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; unset ones keep their defaults."""
        env = os.environ if env is None else env
        kw: dict[str, object] = {}
        if env.get("REDIS_URL"):
            kw["redis_url"] = env["REDIS_URL"]
            if is_cluster(env["REDIS_URL"]):
                try:
                    parse_cluster_url(env["REDIS_URL"])  # refused now, not when the first beacon comes
                except ValueError as exc:
                    raise ValueError(f"REDIS_URL: {exc}") from None
        if env.get("DATABASE_URL"):
            kw["database_url"] = env["DATABASE_URL"]
        if env.get("API_KEYS"):
            kw["api_keys"] = _csv(env["API_KEYS"])
        if env.get("ALLOWED_ORIGINS"):
            kw["allowed_origins"] = _csv(env["ALLOWED_ORIGINS"])
        if env.get("IDENTIFY_SECRET"):
            kw["identify_secrets"] = _csv(env["IDENTIFY_SECRET"])
        if env.get("PLACEHOLDERS"):
            kw["placeholders"] = tuple(p.lower() for p in _csv(env["PLACEHOLDERS"]))
        if env.get("HOST"):
            kw["host"] = env["HOST"]
        if env.get("VAR_DIR"):
            kw["var_dir"] = Path(env["VAR_DIR"])
        if env.get("ORGANISATION_NAME"):
            kw["organisation_name"] = env["ORGANISATION_NAME"]
        if env.get("USER_EMAIL"):
            kw["user_email"] = env["USER_EMAIL"]
        for name, attr in (("SMTP_URL", "smtp_url"), ("SMS_WEBHOOK_URL", "sms_webhook_url")):
            if env.get(name):
                kw[attr] = env[name]
        if env.get("DEFAULT_PHONE_REGION"):
            kw["default_phone_region"] = env["DEFAULT_PHONE_REGION"]
        for name, attr in (
            ("PORT", "port"), ("ANON_TTL_DAYS", "anon_ttl_days"), ("ANON_TTL_SECONDS", "anon_ttl_s"),
            ("HISTORY_CAP", "history_cap"),
            ("MAX_BODY_BYTES", "max_body_bytes"), ("MAX_EVENTS", "max_events"),
            ("STITCH_PAUSE_MS", "stitch_pause_ms"), ("ORG_ID", "org_id"), ("IMPORT_CHUNK_ROWS", "import_chunk_rows"),
            ("HELD_EVENT_TTL_DAYS", "held_event_ttl_days"), ("SEND_RECEIPT_TTL_DAYS", "send_receipt_ttl_days"),
            ("IMPORT_PARSE_WORKERS", "import_parse_workers"),
        ):
            if env.get(name):
                kw[attr] = int(env[name])
        if env.get("WORKER_ENABLED"):
            kw["worker_enabled"] = env["WORKER_ENABLED"].lower() not in ("0", "false", "no")
        if env.get("BEACON_LOG_SAMPLE"):
            kw["beacon_log_sample"] = min(max(float(env["BEACON_LOG_SAMPLE"]), 0.0), 1.0)
        for name, attr in (("RATE_LIMIT_TRACK", "rate_limit_track"), ("RATE_LIMIT_API", "rate_limit_api")):
            if name in env:  # set but empty: no limit
                kw[attr] = parse_rate(env[name], name)
        if env.get("TRUSTED_PROXIES"):
            kw["trusted_proxies"] = parse_networks(_csv(env["TRUSTED_PROXIES"]))
        if env.get("LOG_JSON"):
            kw["log_json"] = env["LOG_JSON"].lower() in ("1", "true", "yes")
        return cls(**kw)  # type: ignore[arg-type]
