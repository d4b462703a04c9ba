"""Every Prometheus metric CleanInbox exports, in one place (registry injectable for tests).

Names use the ``cleaninbox_`` prefix, ``_total`` for counters and seconds for durations.
The Grafana dashboard (deploy/grafana) queries only these names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CYCLE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STAGES = ("fetch", "parse", "classify", "act", "state")
HTTP_REJECTIONS = ("too_large", "busy", "timeout", "bad_request")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "cleaninbox_messages_processed_total",
            "Messages decided, by predicted intent and resulting action.",
            ["account", "intent", "action"],
            registry=r,
        )
        self.abstentions = Counter(
            "cleaninbox_abstentions_total",
            "Messages on which the model abstained, by reason: low_confidence (best intent "
            "below the confidence threshold) or out_of_scope (none of the intents).",
            ["account", "reason"],
            registry=r,
        )
        self.skipped = Counter(
            "cleaninbox_messages_skipped_total",
            "Messages left alone without a classification, by reason.",
            ["account", "reason"],
            registry=r,
        )
        self.actions = Counter(
            "cleaninbox_actions_total",
            "Server-side actions applied (move, copy, keyword, flag, mark_read).",
            ["account", "action"],
            registry=r,
        )
        self.confidence = Histogram(
            "cleaninbox_confidence",
            "Calibrated confidence of each classification.",
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "cleaninbox_inference_seconds",
            "Model inference time per message (batch time / batch size).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_batch = Histogram(
            "cleaninbox_inference_batch_seconds",
            "Model inference time per batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cycle = Histogram(
            "cleaninbox_cycle_seconds",
            "Duration of one triage cycle over an account.",
            ["account"],
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        self.stage = Counter(
            "cleaninbox_stage_seconds_total",
            "Time spent per pipeline stage (fetch, parse, classify, act, state).",
            ["stage"],
            registry=r,
        )
        self.errors = Counter(
            "cleaninbox_cycle_errors_total",
            "Failed cycles and failed actions, by kind.",
            ["account", "kind"],
            registry=r,
        )
        self.last_success = Gauge(
            "cleaninbox_last_successful_cycle_timestamp_seconds",
            "Unix time of the last successful cycle.",
            ["account"],
            registry=r,
        )
        self.connection = Gauge(
            "cleaninbox_connection_up",
            "1 when the last connection attempt to the account succeeded.",
            ["account"],
            registry=r,
        )
        self.idle_connected = Gauge(
            "cleaninbox_idle_connected",
            "1 while the IDLE watcher of a folder is connected and idling.",
            ["account", "folder"],
            registry=r,
        )
        self.idle_reconnects = Counter(
            "cleaninbox_idle_reconnects_total",
            "IDLE connections lost (or found dead by the liveness check) and replaced.",
            ["account"],
            registry=r,
        )
        self.auth_failed = Gauge(
            "cleaninbox_account_auth_failed",
            "1 while the server or OAuth2 provider refuses the account's credentials "
            "(a person must act, e.g. `cleaninbox auth ACCOUNT`).",
            ["account"],
            registry=r,
        )
        self.oauth_refreshes = Counter(
            "cleaninbox_oauth_token_refreshes_total",
            "OAuth2 access tokens obtained, by reason (start, expiring, rejected).",
            ["account", "reason"],
            registry=r,
        )
        self.corrections = Counter(
            "cleaninbox_corrections_total",
            "Messages the user moved into another triage folder than CleanInbox chose "
            "(recorded for retraining; accounts with feedback: true).",
            ["account"],
            registry=r,
        )
        self.memory_decisions = Counter(
            "cleaninbox_memory_decisions_total",
            "Messages decided by the correction memory instead of the model.",
            ["account"],
            registry=r,
        )
        self.memory_entries = Gauge(
            "cleaninbox_memory_entries",
            "Corrections the memory holds for the model in service (the shared pool as '*').",
            ["account"],
            registry=r,
        )
        self.retrains = Counter(
            "cleaninbox_retrain_runs_total",
            "Scheduled retraining runs started by the daemon, by outcome (promoted, kept, failed).",
            ["outcome"],
            registry=r,
        )
        self.reconciled = Counter(
            "cleaninbox_reconciled_total",
            "Pending decisions found at start-up or after a failure, by outcome.",
            ["account", "outcome"],
            registry=r,
        )
        self.model = Info(
            "cleaninbox_model",
            "The model bundle in service.",
            registry=r,
        )
        self.model_loaded = Gauge(
            "cleaninbox_model_loaded_timestamp_seconds",
            "Unix time the current model bundle was loaded.",
            registry=r,
        )
        self.model_load_failures = Counter(
            "cleaninbox_model_load_failures_total",
            "Model bundles or rules refused on reload (the running pair stays in service).",
            registry=r,
        )
        # Replicas sharing a PostgreSQL state lease their accounts (docs/scaling.md).
        self.leases_held = Gauge(
            "cleaninbox_leases_held",
            "Accounts whose lease this replica holds (it triages only those).",
            ["replica"],
            registry=r,
        )
        self.lease_takeovers = Counter(
            "cleaninbox_lease_takeovers_total",
            "Accounts this replica claimed after another replica's lease expired or was released.",
            ["replica"],
            registry=r,
        )
        self.leases_lost = Counter(
            "cleaninbox_leases_lost_total",
            "Leases this replica found taken or expired when renewing (it stopped acting "
            "on those accounts at once).",
            ["replica"],
            registry=r,
        )
        self.lease_renew_failures = Counter(
            "cleaninbox_lease_renew_failures_total",
            "Lease rounds that could not reach the database.",
            ["replica"],
            registry=r,
        )
        self.fenced_writes = Counter(
            "cleaninbox_fenced_writes_total",
            "State writes refused because this replica no longer held the account's lease.",
            ["replica"],
            registry=r,
        )
        self.accounts_unheld = Gauge(
            "cleaninbox_accounts_unheld",
            "Configured accounts no replica has held for more than two lease TTLs, as this "
            "replica sees the lease table.",
            ["replica"],
            registry=r,
        )
        self.database_up = Gauge(
            "cleaninbox_database_up",
            "1 when the last lease round reached the state database, else 0.",
            ["replica"],
            registry=r,
        )
        self.http_rejected = Counter(
            "cleaninbox_http_rejected_total",
            "HTTP requests refused before any classification, by reason: too_large (413), "
            "busy (429, http.max_concurrent_classify), timeout (408, body not received in "
            "time), bad_request (400, 415, 422).",
            ["reason"],
            registry=r,
        )
        for stage in STAGES:
            self.stage.labels(stage)
        for reason in HTTP_REJECTIONS:
            self.http_rejected.labels(reason)

    def set_model(self, version: str, base_model: str, text_recipe: str, loaded_at: float) -> None:
        self.model.info({"version": version, "base_model": base_model, "text_recipe": text_recipe})
        self.model_loaded.set(loaded_at)
