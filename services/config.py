"""Settings for every Hounsfield process: one YAML file plus ``HOUNSFIELD_*`` environment variables.

Environment variables win over the YAML file; nested keys use ``__``
(``HOUNSFIELD_LISTENER__PORT=11113``). Every model forbids unknown keys so that a typo fails at
start-up with the key's name instead of being silently ignored.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from hounsfield.contracts.rules import Rule
from hounsfield.dicom_syntaxes import BIG_ENDIAN, DEFAULT_PREFERENCE, PRIVATE_STORAGE_CLASSES, STORED
from hounsfield.errors import HounsfieldError

__all__ = [
    "ConfigurationInvalid",
    "ContainerSettings",
    "DashboardSettings",
    "DeploymentSettings",
    "DestinationSettings",
    "DriftSettings",
    "FeedbackSettings",
    "FhirSettings",
    "KubernetesSettings",
    "ListenerSettings",
    "OutboundTLSSettings",
    "QueryRetrieveSettings",
    "RegistrySettings",
    "RetentionSettings",
    "Settings",
    "SourceSettings",
    "TLSSettings",
    "WorkerSettings",
    "is_loopback_host",
    "load_settings",
]

ENV_PREFIX = "HOUNSFIELD_"
CONFIG_ENV = "HOUNSFIELD_CONFIG"
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash or control


class ConfigurationInvalid(HounsfieldError, ValueError):
    """The configuration is refused: a value is missing or wrong; the message names each key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_UID_TEXT = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError("an AE title is 1-16 printable characters without backslash")
    return value


class OutboundTLSSettings(_Strict):
    """DICOM over TLS to a peer Hounsfield calls: a destination (C-STORE) or a source PACS (C-FIND, C-MOVE, C-GET).

    The peer's certificate is always verified: it must chain to ``ca_bundle`` (the system's trust
    store when unset) and, unless ``check_hostname`` is off, name ``server_hostname``.
    """

    ca_bundle: Path | None = None
    """CA certificates (PEM) the peer's certificate must chain to; the system's trust store when unset."""
    certificate: Path | None = None
    """This side's certificate chain (PEM), for a peer that requires client certificates."""
    private_key: Path | None = None
    """The private key of ``certificate`` (PEM)."""
    minimum_version: Literal["1.2", "1.3"] = "1.2"
    server_hostname: str | None = None
    """The name the peer's certificate must carry; the configured host when unset."""
    check_hostname: bool = True
    """Check that the peer's certificate names ``server_hostname``. Turn it off only for a peer whose
    certificate cannot name it (its chain is still verified against ``ca_bundle``)."""

    @model_validator(mode="after")
    def _key_with_certificate(self) -> OutboundTLSSettings:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together (the client certificate and its key)")
        return self

    def tls_args(self, host: str) -> tuple[ssl.SSLContext, str]:
        """pynetdicom's ``associate(tls_args=...)`` for a peer at ``host``: the client context and the name to check.

        Raises :class:`OSError` (:class:`ssl.SSLError` included) when a file cannot be read or used.
        """
        context = ssl.create_default_context(cafile=str(self.ca_bundle) if self.ca_bundle is not None else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_3 if self.minimum_version == "1.3" else ssl.TLSVersion.TLSv1_2
        context.check_hostname = self.check_hostname
        if self.certificate is not None and self.private_key is not None:
            context.load_cert_chain(self.certificate, self.private_key)
        return context, self.server_hostname or host


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a URL's host name) is this machine's loopback: 127.0.0.0/8, ::1 or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse_insecure_http(url: str, credentials: list[str], allowed: bool) -> None:
    """Credentials never go to an ``http://`` URL, where anyone on the path reads them, unless allowed."""
    if url.lower().startswith("http://") and credentials and not allowed:
        raise ValueError(
            f"url is http:// and {' and '.join(credentials)} would send credentials in clear text: "
            "use an https:// URL, or set allow_insecure_http: true to accept that"
        )


class QueryRetrieveSettings(_Strict):
    """How to query and retrieve from a source PACS (C-FIND, then C-MOVE or C-GET)."""

    host: str
    port: int = Field(ge=1, le=65535)
    ae_title: str | None = None
    """The PACS's own (called) AE title; the source's calling AE title when unset."""
    retrieve: Literal["c-move", "c-get"] = "c-move"
    move_destination: str | None = None
    """The AE title the PACS knows this listener by, for C-MOVE; the listener's AE title when unset."""
    count_completeness: bool = True
    """Complete a study as soon as the received count equals the source's NumberOfStudyRelatedInstances."""
    timeout_s: float = Field(30.0, gt=0)
    tls: OutboundTLSSettings | None = None
    """Query and retrieve over DICOM TLS (the source's TLS port); plain TCP when unset."""

    _ae = field_validator("ae_title", "move_destination")(
        lambda value: None if value is None else _check_ae_title(value)
    )


class SourceSettings(_Strict):
    """A sender the listener accepts: its calling AE title and, optionally, where it may call from."""

    ae_title: str
    networks: list[IPv4Network | IPv6Network] = Field(default_factory=list)
    """Addresses (``10.1.2.3`` or CIDR ``10.1.0.0/16``) it may call from; any when empty."""
    called_ae_titles: list[str] = Field(default_factory=list)
    """Called AE titles it may use; the listener's own AE title when empty."""
    query: QueryRetrieveSettings | None = None
    """Set when the source is a PACS that Hounsfield may query and retrieve from."""
    tls_client_names: list[str] = Field(default_factory=list)
    """Bind the source to client certificates: when set, its AE title is accepted only over DICOM TLS
    from a verified client certificate whose subject common name or a DNS name among its subject
    alternative names is one of these (needs ``listener.tls.client_ca``)."""

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("called_ae_titles")
    @classmethod
    def _check_called(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(value) for value in values]


class TLSSettings(_Strict):
    """DICOM over TLS (TLS 1.2 or later) on a second port."""

    port: int = Field(2762, ge=1, le=65535)
    certificate: Path
    """The server certificate chain (PEM)."""
    private_key: Path
    """The server's private key (PEM)."""
    client_ca: Path | None = None
    """CA bundle (PEM) for client certificates; set it to verify them."""
    require_client_certificate: bool = False
    """Refuse TLS clients without a certificate signed by ``client_ca``."""
    minimum_version: Literal["1.2", "1.3"] = "1.2"
    only: bool = False
    """TLS-only: the plain port serves the loopback interface alone (the pod's own readiness C-ECHO),
    so nothing beyond the host can sidestep TLS and its client certificates."""

    @model_validator(mode="after")
    def _client_ca_needed(self) -> TLSSettings:
        if self.require_client_certificate and self.client_ca is None:
            raise ValueError("require_client_certificate needs client_ca")
        return self


class ListenerSettings(_Strict):
    """The DICOM listener (storage SCP)."""

    ae_title: str = "HOUNSFIELD"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    complete_on_release: bool = True
    """Declare a study complete when the association that sent it is released."""
    quiet_period_s: float = Field(30.0, gt=0)
    """Fallback for senders that spread a study over several associations (or abort)."""
    enqueue_retry_s: float = Field(5.0, gt=0, le=300)
    """A job the broker did not take (Redis restarting) is sent again this often until it does; it stays
    queued in the database meanwhile, and a listener that restarts sends every queued job again. A study
    completed while the database was unreachable is routed again this often, too."""
    acse_timeout_s: float = Field(2.0, gt=0, le=60)
    """After the listener's last PDU (A-RELEASE-RP, A-ASSOCIATE-RJ, A-ABORT), how long the peer has to
    close the connection before the listener does (PS3.8's ARTIM timer); a connection that was never
    associated still counts against ``max_pending_*`` meanwhile."""
    request_timeout_s: float = Field(10.0, gt=0, le=120)
    """A connection must have sent its whole A-ASSOCIATE-RQ (after its TLS handshake) within this, or
    it is closed."""
    network_timeout_s: float = Field(60.0, gt=0)
    """While the listener waits for the peer, a whole PDU must arrive within this, or the association
    is aborted: a byte now and then does not keep it open."""
    max_associations: int = Field(32, ge=1, le=1024)
    """Associations at once, from all callers; more are rejected (transient, local limit)."""
    max_associations_per_address: int = Field(16, ge=1, le=1024)
    """Associations at once from one network address, so that one caller cannot take every slot."""
    max_pending_connections: int = Field(64, ge=1, le=4096)
    """Connections not yet associated (TLS handshake or A-ASSOCIATE-RQ under way), from all callers;
    more are closed at once."""
    max_pending_per_address: int = Field(16, ge=1, le=4096)
    """Connections not yet associated from one network address; more are closed at once."""
    max_inflated_mb: int = Field(256, ge=1, le=65536)
    """How far a dataset in the deflated transfer syntax may inflate while it is checked; beyond it the
    instance is refused (0xC210)."""
    transfer_syntaxes: list[str] = Field(default_factory=lambda: list(DEFAULT_PREFERENCE))
    """The transfer syntaxes accepted, best first: for each presentation context the listener picks the
    best one the sender proposes (lossless and uncompressed before lossy by default). Explicit VR Big
    Endian, when listed, is chosen only when a context offers nothing else."""
    private_sop_classes: list[str] = Field(default_factory=lambda: list(PRIVATE_STORAGE_CLASSES))
    """Vendor-private storage SOP classes accepted beside the standard ones (UIDs)."""
    min_free_disk_mb: int = Field(1024, ge=0)
    """Refuse instances (0xA700, out of resources) rather than fill the study store's disk."""
    sources: dict[str, SourceSettings] = Field(default_factory=dict)
    """Who may send, by name. Associations from anyone else are rejected unless ``open_mode`` is on."""
    open_mode: bool = False
    """Accept (and log) unknown callers: for a first installation, while the sources are being listed."""
    tls: TLSSettings | None = None
    metrics_port: int | None = Field(None, ge=1, le=65535)
    """Serve Prometheus metrics on ``host:metrics_port/metrics`` (off when unset)."""
    journal: bool = True
    """Make instances durable in the ingest journal (``data_dir/journal``) before their Success, and
    write them into the study store right after. Off: each instance's file is fsynced and indexed
    before its Success (slower; for file systems where a preallocated journal buys nothing)."""
    journal_segment_mb: int = Field(64, ge=8, le=1024)
    """Size of one journal segment file; the journal holds at most 8 of them."""

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("transfer_syntaxes")
    @classmethod
    def _stored_syntaxes(cls, values: list[str]) -> list[str]:
        unknown = [value for value in values if value not in STORED]
        if unknown:
            raise ValueError(f"not transfer syntaxes the listener can store: {', '.join(unknown)}")
        if not [value for value in values if value != BIG_ENDIAN]:
            raise ValueError("list at least one transfer syntax besides Explicit VR Big Endian")
        return list(dict.fromkeys(values))

    @field_validator("private_sop_classes")
    @classmethod
    def _uids(cls, values: list[str]) -> list[str]:
        bad = [value for value in values if not _UID_TEXT.match(value)]
        if bad:
            raise ValueError(f"not UIDs: {', '.join(bad)}")
        return values

    @model_validator(mode="after")
    def _bound_sources_need_client_ca(self) -> ListenerSettings:
        bound = [name for name, source in self.sources.items() if source.tls_client_names]
        if bound and (self.tls is None or self.tls.client_ca is None):
            raise ValueError(f"sources {', '.join(bound)} set tls_client_names, which needs tls.client_ca")
        return self

    @model_validator(mode="after")
    def _distinct_ports(self) -> ListenerSettings:
        ports = [("port", self.port), ("tls.port", self.tls.port if self.tls else None)]
        ports.append(("metrics_port", self.metrics_port))
        seen: dict[int, str] = {}
        for name, port in ports:
            if port is None:
                continue
            if port in seen:
                raise ValueError(f"{name} must differ from {seen[port]} ({port})")
            seen[port] = name
        return self


class DestinationSettings(_Strict):
    """A PACS (or other DICOM node) that receives results: over C-STORE, or over STOW-RS (DICOMweb).

    C-STORE (``protocol: dimse``, the default) needs ``ae_title``, ``host`` and ``port``; STOW-RS
    (``protocol: stow-rs``) needs ``url``, the DICOMweb service's base (the studies resource is
    ``<url>/studies``). Credentials never sit in the configuration: ``token_env`` names the
    environment variable holding a bearer token, ``password_env`` the one holding the password for
    ``username`` (HTTP basic).
    """

    protocol: Literal["dimse", "stow-rs"] = "dimse"
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    url: str | None = Field(None, pattern=r"^https?://[^\s]+$")
    """The DICOMweb base URL, for STOW-RS (``https://pacs.example.org/dicom-web``)."""
    token_env: str | None = None
    username: str | None = None
    password_env: str | None = None
    clinical: bool = True
    """Clinical destinations never receive results of shadow deployments."""
    outputs: list[Literal["seg", "sr", "sc", "gsps"]] = ["seg", "sr"]
    """What it receives: the SEG and the SR, and for a PACS that cannot show a SEG, display copies: a
    burned-in Secondary Capture series (``sc``) and a Grayscale Softcopy Presentation State (``gsps``)."""
    patient_safety_rejection: bool = False
    """It understands IOCM *Rejected for Patient Safety Reasons* (113037, DCM); results withdrawn for
    patient safety are rejected there with that title, elsewhere with *Rejected for Quality Reasons*."""
    retries: int = Field(2, ge=0, le=20)
    """Quick retries within one export attempt (the worker waits in between)."""
    retry_backoff_s: float = Field(1.0, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    """STOW-RS: how long one request may take."""
    tls: OutboundTLSSettings | None = None
    """C-STORE over DICOM TLS (the destination's TLS port); plain TCP when unset."""
    allow_insecure_http: bool = False
    """STOW-RS: let an ``http://`` url carry credentials (``token_env``, ``username``), which then cross
    the network in clear text; refused at load otherwise."""
    wait_max_s: float = Field(86400.0, gt=0)
    """How long a job waits for this destination while it stays unreachable (it is retried from the
    queue meanwhile, the worker free for other jobs) before the job fails."""

    _ae = field_validator("ae_title")(lambda value: None if value is None else _check_ae_title(value))

    @model_validator(mode="after")
    def _protocol_needs(self) -> DestinationSettings:
        if self.protocol == "dimse":
            missing = [key for key in ("ae_title", "host", "port") if getattr(self, key) is None]
            if missing:
                raise ValueError(f"protocol dimse (C-STORE) needs {', '.join(missing)}")
            if self.url is not None:
                raise ValueError("url is for protocol stow-rs; C-STORE uses ae_title, host and port")
        else:
            if self.url is None:
                raise ValueError("protocol stow-rs needs url (the DICOMweb base, e.g. https://pacs/dicom-web)")
            if self.token_env and self.username:
                raise ValueError("choose one of token_env (bearer) and username with password_env (basic)")
            if self.tls is not None:
                raise ValueError("tls is for protocol dimse (C-STORE); STOW-RS is secured by an https:// url")
        if bool(self.username) != bool(self.password_env):
            raise ValueError("username and password_env go together (HTTP basic)")
        if self.url is not None:
            credentials = ["token_env"] * bool(self.token_env) + ["username/password_env"] * bool(self.username)
            _refuse_insecure_http(self.url, credentials, self.allow_insecure_http)
        return self

    @property
    def label(self) -> str:
        """How messages name it: ``AE@host:port`` or the DICOMweb URL."""
        if self.protocol == "stow-rs":
            return f"STOW-RS {self.url}"
        return f"{self.ae_title}@{self.host}:{self.port}"


class DeploymentSettings(_Strict):
    """One model version bound to a routing rule, destinations and a mode."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    app: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """The App SDK Application class the in-process runtime runs, ``package.module:ClassName``."""
    model_path: Path = Path("/opt/holoscan/models")
    """The model file or folder as the workers see it (in-process and subprocess runtimes); a container's
    models are in its image (the default, the MAP spec's model root, says so)."""
    model_name: str
    model_version: str = Field(pattern=r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")
    manufacturer: str = "Hounsfield"
    mode: Literal["shadow", "research", "clinical"] = "research"
    rule: Rule
    destinations: list[str] = Field(default_factory=list)
    queue: Literal["stat", "routine", "batch"] = "routine"
    timeout_s: float = Field(600.0, gt=0)
    runtime: Literal["in-process", "subprocess", "container"] = "in-process"
    """``in-process``: ``app`` imported in the worker, its jobs run in a warm process forked from it.
    ``subprocess``: the MAP's ``app.json`` command as a process of its own (``map_path``,
    ``application_root``). ``container``: the MAP's ``image`` run with podman or docker
    (``worker.container``)."""
    map_path: Path | None = None
    """The MAP's folder (``app.json`` and ``pkg.json``); needed by the subprocess runtime."""
    application_root: Path | None = None
    """Where the MAP's ``applicationRoot`` is on the workers (default: ``map_path``)."""
    image: str | None = None
    """The MAP's container image: run by the container runtime, and by the Kubernetes runtime (MAPs
    declaring a GPU or large memory)."""
    network: bool = False
    """Whether the container runtime gives the application a network (``worker.container.network``);
    without it the container has none: it reads its input and writes its results, nothing else."""

    @model_validator(mode="after")
    def _runtime_needs(self) -> DeploymentSettings:
        if self.runtime == "container" and not self.image:
            raise ValueError("runtime container needs image (the MAP's image, `hounsfield map package` makes it)")
        if self.runtime != "container" and "model_path" not in self.model_fields_set:
            raise ValueError(f"runtime {self.runtime} needs model_path (the model file or folder on the workers)")
        if self.runtime == "subprocess" and self.map_path is None:
            raise ValueError("runtime subprocess needs map_path (the folder with app.json and pkg.json)")
        if self.runtime == "in-process" and self.app is None:
            raise ValueError("runtime in-process needs app (the App SDK Application class, module:Class)")
        return self


class KubernetesSettings(_Strict):
    """Where the worker submits MAPs that declare a GPU or large memory (only when it runs in a cluster)."""

    enabled: bool = True
    """Use the Kubernetes runtime for such MAPs when the worker runs in a cluster (in-process otherwise)."""
    namespace: str = Field("hounsfield", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    store_claim: str = "hounsfield-store"
    """The ReadWriteMany PersistentVolumeClaim holding the study store (the worker's ``data_dir``)."""
    service_account: str | None = None
    large_memory_gib: float = Field(16.0, gt=0)
    """A MAP declaring at least this much memory (``pkg.json#resources.memory``) runs as a Job."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    gpu_node_selector: dict[str, str] = Field(default_factory=dict)
    """Added for MAPs that declare a GPU (e.g. ``nvidia.com/gpu.present: "true"``)."""
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    ttl_after_finished_s: int = Field(3600, ge=0)
    run_as_user: int = Field(1000, ge=1)
    image_pull_secrets: list[str] = Field(default_factory=list)
    """Secrets (``kubernetes.io/dockerconfigjson``) the Jobs' pods pull the MAP's image with."""
    shm_size: str = Field("1Gi", pattern=r"^[0-9]+(\.[0-9]+)?([KMGT]i?)?$")
    """The size limit of the memory-backed ``/dev/shm`` each Job gets (PyTorch's DataLoader workers share
    tensors there; a container runtime gives 64 MiB otherwise). It counts against the Job's memory limit."""


class ContainerSettings(_Strict):
    """How the container runtime runs a MAP's image (deployments with ``runtime: container``), with podman
    where it is installed, docker otherwise (:func:`hounsfield.containers.engine`)."""

    user: str = Field("10001:10001", pattern=r"^[0-9]+:[0-9]+$")
    """The uid:gid the application runs as when the worker runs as root (a worker of another user runs
    it as itself); the job's output and work folders are given to it. Never root."""
    pull: Literal["never", "missing", "always"] = "missing"
    """When the engine pulls the image; ``never`` for sites whose images are loaded by hand (air gap)."""
    network: str = Field("bridge", pattern=r"^[a-z0-9][a-z0-9:=,._/-]*$")
    """The ``--network`` of a deployment allowed one (``network: true``); every other runs with ``none``."""
    tmp_size: str = Field("1Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Mi|Gi)$")
    """Size of the memory-backed ``/tmp``: the root file system is read-only."""
    pids_limit: int = Field(4096, ge=16)
    gpu_device: str = "nvidia.com/gpu=all"
    """The ``--device`` (CDI name) that gives a MAP declaring a GPU this worker's GPUs (``worker.gpus``)."""


class WorkerSettings(_Strict):
    """The Celery worker."""

    queues: list[Literal["stat", "routine", "batch"]] = ["stat", "routine", "batch"]
    dciodvfy: str = "dciodvfy"
    """dicom3tools' IOD checker, run on every result at the validation gate."""
    java: str = "java"
    pixelmed_jar: str = "/usr/share/java/pixelmed.jar"
    """PixelMed (Debian ``libpixelmed-java``), whose ``DicomSRValidator`` checks the templates of every
    structured report and rejection note at the validation gate (run with ``java``)."""
    pixelmed_heap_mb: int = Field(1024, ge=256)
    """Java heap of one ``DicomSRValidator`` run; it needs more as a report's Image Library grows. A run
    out of memory stops the result with the reason."""
    validator_timeout_s: float = Field(300.0, gt=0)
    """A validator still running after this long stops the result (PixelMed needs seconds, not minutes,
    for a report)."""
    keep_workspaces: bool = False
    export_retry_first_s: float = Field(5.0, gt=0)
    """A job whose destination is unreachable tries again after this long, then twice as long each
    time, up to ``export_retry_max_s``."""
    export_retry_max_s: float = Field(300.0, gt=0)
    database_retry_s: float = Field(5.0, gt=0, le=300)
    """A job that meets an unreachable database (PostgreSQL restarting) is tried again after this long; it
    stays running meanwhile, and is not marked failed for it ..."""
    database_retry_max_s: float = Field(3600.0, gt=0)
    """... until the database has been unreachable for this long in all: then the job is failed with that
    reason (when the database takes the write; an operator retries it) and its task gives up."""
    app_max_jobs: int = Field(200, ge=1)
    """An in-process application's warm process serves this many jobs, then a fresh one is forked
    (memory an application leaks comes back). ``1``: a fresh process for every job, never warm."""
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    container: ContainerSettings = Field(default_factory=ContainerSettings)
    gpus: int = Field(0, ge=0, le=64)
    """GPUs this worker can give an application it runs itself (in-process or as a subprocess). A MAP
    whose ``pkg.json`` declares more is refused with the reason by a worker that holds GPUs (it asks the
    cluster for no more while holding its own); a worker without GPUs runs it as a Kubernetes Job where
    it can (a cluster, an image), and refuses it otherwise: never run on the CPU unasked."""
    ready_file: Path | None = None
    """Written once the worker consumes from its queues, removed when it stops: a readiness probe that
    a busy worker (one job at a time) still passes, where a ping through the broker would wait."""
    metrics_port: int | None = Field(None, ge=1, le=65535)
    """Serve the worker's Prometheus metrics on ``metrics_host:metrics_port/metrics`` (off when unset). Each
    worker process needs a port of its own: two workers on one host take two ports."""
    metrics_host: str = "127.0.0.1"
    """Where the metrics port listens: this host only by default; ``0.0.0.0`` in a pod that Prometheus scrapes."""
    visibility_timeout_s: float | None = Field(None, gt=0)
    """How long a job's message may stay unacknowledged before Redis hands it to another worker (its
    worker died mid-job). Default: twice the longest timeout of any deployed version, plus 300 s.
    Keep it above that timeout, or a job still running is run twice."""
    application_environment: list[str] = Field(
        default_factory=lambda: [
            "PATH", "HOME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "CUDA_*", "NVIDIA_*",
            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_*", "XDG_CACHE_HOME",
        ]
    )  # fmt: skip
    """The worker's environment variables an application run as a process of its own (the subprocess
    runtime) may see, by name, or by prefix with a trailing ``*``. Nothing else is passed: the worker's
    environment holds the database URL, the broker's password and the destinations' credentials. The
    MAP's own ``app.json#environment`` and the ``HOLOSCAN_*`` paths of the job are always set."""

    @field_validator("application_environment")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\*?", name):
                raise ValueError(f"{name!r} is not a variable name (or a prefix ending in *)")
        return names


class OIDCSettings(_Strict):
    """Bearer JWTs from an OpenID Connect provider, validated against its published keys."""

    issuer: str
    """The ``iss`` every token must carry."""
    audience: str
    """The ``aud`` every token must carry (this registry's client id at the provider)."""
    jwks_file: Path | None = None
    """The provider's signing keys as a JWKS document on disk (an air-gapped site copies it there)."""
    jwks_url: str | None = None
    """Or where to fetch them (``<issuer>/.well-known/jwks.json`` as a rule): https, or http to a loopback
    host only; fetched at start and again on an unknown key id (``jwks_refresh_min_s``)."""
    role_claim: str = "roles"
    """The claim that carries the caller's roles (a string or a list of strings)."""
    roles: dict[str, Literal["viewer", "radiologist", "model-developer", "admin", "sender"]] = Field(
        default_factory=dict
    )
    """Provider role names to Hounsfield roles; a token whose roles map to none is refused (403)."""
    algorithms: list[Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]] = ["RS256", "ES256"]
    leeway_s: float = Field(30.0, ge=0, le=300)
    """How far a token's times (``exp``, ``nbf``, ``iat``) may be off this host's clock and still be taken."""
    jwks_refresh_min_s: float = Field(60.0, ge=1, le=86400)
    """A token signed with a key id the registry does not know makes it fetch the provider's keys again
    (``jwks_url``), at most once this often (a provider rotating its keys; nobody can make it fetch more)."""

    @model_validator(mode="after")
    def _one_key_source(self) -> OIDCSettings:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("set exactly one of jwks_file and jwks_url")
        return self


class FhirSettings(_Strict):
    """Results announced to the RIS/EHR as a FHIR R4 DiagnosticReport with one Observation per finding."""

    url: str = Field(pattern=r"^https?://[^\s]+$")
    """The FHIR server's base (the report is created at ``<url>/DiagnosticReport``)."""
    token_env: str | None = None
    """The environment variable holding a bearer token, when the server wants one."""
    modes: list[Literal["shadow", "research", "clinical"]] = ["clinical"]
    """Jobs of deployments in these modes are announced (shadow results never reach clinicians)."""
    timeout_s: float = Field(30.0, gt=0)
    allow_insecure_http: bool = False
    """Let an ``http://`` url carry the bearer token (``token_env``), which then crosses the network in
    clear text; refused at load otherwise."""

    @model_validator(mode="after")
    def _no_token_in_clear(self) -> FhirSettings:
        _refuse_insecure_http(self.url, ["token_env"] * bool(self.token_env), self.allow_insecure_http)
        return self


class FeedbackSettings(_Strict):
    """Radiologists' feedback on results: verdicts and comments through the API, corrected SEGs on arrival."""

    recognise_corrections: bool = True
    """A SEG that arrives for a study and refers to one of Hounsfield's SEGs (or to the same source series
    in the same frame of reference) is recorded as a correction, with its Dice per segment."""
    max_comment_chars: int = Field(2000, ge=1, le=100_000)
    """The longest comment a verdict may carry; a longer one is refused (422)."""
    max_correction_mb: float = Field(512, gt=0)
    """The most memory measuring a correction's Dice may take, reckoned from the headers before any pixel
    is decoded: both SEGs' frames, and a segment pair's pixels and masks over every source image either refers
    to, a byte per voxel (for a 512 x 512 x 300 CT about 320 MiB). A correction beyond it is recorded without
    Dice."""


class DriftSettings(_Strict):
    """Input drift per model version: each job's input profiled by the worker, each version's recent jobs
    compared with its reference (docs/drift.md)."""

    enabled: bool = True
    """Profile each job's input before its application runs, and compare (off: no profile, no event)."""
    reference_jobs: int = Field(100, ge=2, le=10_000)
    """The reference: a version's first this many profiled jobs (or, when a model developer set a reference
    window, its first this many in that window)."""
    window_jobs: int = Field(50, ge=2, le=10_000)
    """The recent window: a version's last this many profiled jobs after its reference."""
    min_reference_jobs: int = Field(30, ge=2)
    """Fewer profiles in the reference (of a feature: fewer with a value): not enough data, no alarm."""
    min_window_jobs: int = Field(20, ge=2)
    """Fewer profiles in the recent window (of a feature: fewer with a value): not enough data, no alarm."""
    ks_threshold: float = Field(0.3, gt=0, le=1)
    """A numeric feature drifts when its Kolmogorov-Smirnov distance (reference against recent) reaches this..."""
    scanner_threshold: float = Field(0.2, gt=0, le=1)
    """... the scanner when its total variation distance reaches this ..."""
    max_p_value: float = Field(0.001, gt=0, le=1)
    """... and the difference is significant: its test's p-value (KS; chi-square for the scanner) at most this."""
    max_sampled_slices: int = Field(16, ge=1, le=10_000)
    """Slices (frames) whose pixels are decoded per job, evenly spaced through its input; headers of every
    instance are read."""
    max_sampled_pixels: int = Field(200_000, ge=100, le=100_000_000)
    """Pixels per job the intensity statistics are taken from (a seeded sample of the decoded slices')."""
    max_metric_versions: int = Field(50, ge=1, le=10_000)
    """Model versions whose drift the registry's ``/metrics`` computes at each scrape (the most recently
    profiled): each reads at most ``reference_jobs + window_jobs`` profiles."""

    @model_validator(mode="after")
    def _minimums_within_windows(self) -> DriftSettings:
        if self.min_reference_jobs > self.reference_jobs:
            raise ValueError(f"min_reference_jobs must be at most reference_jobs ({self.reference_jobs})")
        if self.min_window_jobs > self.window_jobs:
            raise ValueError(f"min_window_jobs must be at most window_jobs ({self.window_jobs})")
        return self


class DashboardSettings(_Strict):
    """The web dashboard the registry serves at ``/dashboard`` (docs/dashboard.md)."""

    enabled: bool = True
    """Serve the dashboard; off: every ``/dashboard`` path answers 401 or 404 like any unknown API path."""
    session_max_age_s: int = Field(28800, ge=60, le=7 * 86400)
    """How long a sign-in with an API token lasts; the cookie is refused after it (the token itself is
    checked again on every request, so a revoked token signs its user out at once)."""
    session_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The name of an environment variable holding the key that signs session cookies and CSRF tokens
    (at least 32 characters), shared by every registry replica. Unset: a random key per process, so a
    restart signs everybody out and replicas do not know each other's sessions."""
    page_size: int = Field(50, ge=1, le=200)
    """Rows per page of every list (studies, jobs, results, feedback, audit); a ``size`` asked for is
    capped at ``max_page_size``."""
    max_page_size: int = Field(200, ge=1, le=500)
    """The most rows one page may show, whatever a ``size`` in the address asks."""
    pacs_viewer_url: str | None = Field(None, max_length=1000)
    """A link into the PACS' viewer per study and result, e.g.
    ``https://pacs.example.org/viewer?StudyInstanceUIDs={study_uid}``; ``{study_uid}``,
    ``{series_uid}`` and ``{sop_uid}`` are replaced (URL-encoded). Unset: no links. http(s) only."""

    @field_validator("pacs_viewer_url")
    @classmethod
    def _viewer_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^\s]+$", value):
            raise ValueError("pacs_viewer_url must be an http(s) URL without spaces")
        unknown = set(re.findall(r"\{([^}]*)\}", value)) - {"study_uid", "series_uid", "sop_uid"}
        if unknown:
            known = "study_uid, series_uid, sop_uid"
            raise ValueError(f"pacs_viewer_url: unknown placeholder(s) {sorted(unknown)} (known: {known})")
        return value

    @model_validator(mode="after")
    def _page_sizes(self) -> DashboardSettings:
        if self.page_size > self.max_page_size:
            raise ValueError(f"page_size ({self.page_size}) must not exceed max_page_size ({self.max_page_size})")
        return self


class RegistrySettings(_Strict):
    """The registry HTTP API."""

    host: str = "127.0.0.1"
    port: int = Field(8470, ge=1, le=65535)
    stow_enabled: bool = True
    """Accept DICOM instances over STOW-RS at ``/dicomweb/studies`` (stored and indexed like C-STORE)."""
    max_stow_body_mb: int = Field(2048, ge=1)
    """Largest STOW-RS request body; a bigger one is answered 413 (parts complete before it stay stored)."""
    api_docs: bool = True
    """Serve the API's OpenAPI document and its pages (``/openapi.json``, ``/docs``, ``/redoc``) to anyone
    who can reach the port (they describe the routes, never data). Off: those paths answer 404."""
    max_stow_parts: int = Field(10000, ge=1)
    """The most parts (instances) one STOW-RS request may carry; the request is refused (413) at the first
    part beyond it (parts complete before it stay stored)."""
    max_request_body_mb: int = Field(2, ge=1, le=1024)
    """Largest body of any other request (catalog, rules, dry runs, tokens); a bigger one is answered 413
    before it is parsed, and only after the caller's credential was checked."""
    development: bool = False
    """A development or demo installation: with no way to sign in, start-up makes an admin API token
    and writes it to ``data_dir/registry-admin-token`` (mode 0600). Otherwise start-up refuses until
    an API token exists (``hounsfield tokens create``) or ``oidc`` is configured."""
    oidc: OIDCSettings | None = None
    bootstrap_admin_token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The name of an environment variable holding an admin API token (``hf_`` and at least 32 more
    characters), e.g. from a Kubernetes Secret: while nobody could sign in, start-up stores its hash
    as the admin token ``bootstrap-admin``. Revoke it once your own tokens or OIDC are in place."""
    metrics_port: int | None = Field(None, ge=1, le=65535)
    """Serve the Prometheus metrics on ``host:metrics_port/metrics`` instead of the API's port, where
    ``/metrics`` then answers 404: a proxy or Ingress that routes the API never exposes them."""
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    metrics_jobs_count_max: int = Field(100_000, ge=1)
    """Each scrape counts the jobs in every unfinished state (``hounsfield_jobs``) up to this many per state:
    a scrape's cost on the database stays bounded during a backlog (a count at the cap means "at least")."""
    metrics_broker_timeout_s: float = Field(1.0, gt=0, le=30)
    """How long a scrape waits for Redis when it reads the queues' depths; past it the depths are left out
    and ``hounsfield_registry_source_up{source="broker"}`` is 0."""

    @model_validator(mode="after")
    def _distinct_ports(self) -> RegistrySettings:
        if self.metrics_port == self.port:
            raise ValueError(f"metrics_port must differ from port ({self.port})")
        return self


class RetentionSettings(_Strict):
    """How long the study store keeps a study's instance files, and when it purges them earlier.

    Off by default: an upgrade deletes nothing until ``enabled`` is set (docs/operations.md).
    """

    enabled: bool = False
    """Purge the study store (in the listener, every ``interval_s`` and at once past the high-water mark)."""
    keep_days: float = Field(30.0, gt=0)
    """Keep a study this long after its last job ended (a study never routed: after its completion)."""
    sources: dict[str, float] = Field(default_factory=dict)
    """Keep days per source: a key of ``listener.sources`` or a calling AE title that sent a series."""
    deployments: dict[str, float] = Field(default_factory=dict)
    """Keep days per deployment that ran a job on the study."""
    rules: dict[str, float] = Field(default_factory=dict)
    """Keep days per stored routing rule, for the studies of its deployments' jobs."""
    high_water_percent: float = Field(90.0, gt=0, le=100)
    """Past this much of the store's file system used, purge early (oldest first) down to ``low_water_percent``."""
    low_water_percent: float = Field(80.0, gt=0, le=100)
    floor_margin_mb: int = Field(1024, ge=0)
    """Also purge early when free space comes within this of the listener's floor (``listener.min_free_disk_mb``),
    until it is twice this above it."""
    interval_s: float = Field(3600.0, gt=0)
    """How often the listener applies the policies (keep days, results, audit)."""
    watch_s: float = Field(2.0, gt=0, le=60)
    """How often the listener reads the store's disk usage for the high-water mark."""
    max_studies_per_run: int = Field(10000, ge=1)
    """The most studies one purge takes; the rest wait for the next."""
    results_keep_days: float | None = Field(None, gt=0)
    """Remove a finished job's result files and workspace (``results/``, ``jobs/``) this long after it ended;
    never when unset (results stay for feedback and withdrawals)."""
    audit_keep_days: float | None = Field(None, gt=0)
    """Delete events (each study's path) and audit-log rows older than this; never when unset (the default)."""

    @field_validator("sources", "deployments", "rules")
    @classmethod
    def _positive_days(cls, values: dict[str, float]) -> dict[str, float]:
        bad = sorted(key for key, days in values.items() if not days > 0)
        if bad:
            raise ValueError(f"keep days must be above 0: {', '.join(bad)}")
        return values

    @model_validator(mode="after")
    def _marks_ordered(self) -> RetentionSettings:
        if self.low_water_percent >= self.high_water_percent:
            raise ValueError("low_water_percent must be below high_water_percent")
        return self


class Settings(BaseSettings):
    """Everything one Hounsfield process needs; build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True)

    data_dir: Path = Path(".hounsfield")
    database_url: str | None = None
    """SQLAlchemy URL; SQLite in ``data_dir`` when unset."""
    redis_url: str | None = None
    """Broker URL; when unset ``hounsfield up`` starts a local redis-server."""
    local_redis_port: int = Field(6390, ge=1, le=65535)
    uid_root: str = Field("1.2.826.0.1.3680043.10.1392.", pattern=r"^([0-9]+\.)+$", max_length=40)
    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    destinations: dict[str, DestinationSettings] = Field(default_factory=dict)
    fhir: FhirSettings | None = None
    """Announce each finished job's results to the RIS/EHR over FHIR (off unless set)."""
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    deployments: list[DeploymentSettings] = Field(default_factory=list)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    """``json``: one JSON object per line (time, level, process, logger, message, correlation ids,
    exception; docs/logs.md), for a log collector. ``text``: one readable line, for a person at a terminal."""
    log_correlation_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The name of an environment variable holding the key of study correlation ids (at least 16
    characters, the same in every process of the installation). Unset: the key is ``uid_root``, so whoever
    holds the configuration and a Study Instance UID can compute the study's id; with a secret key only
    its holders can (docs/logs.md)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides the YAML file, which arrives as init arguments.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        names = [d.name for d in self.deployments]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"deployment names must be unique: {', '.join(duplicated)}")
        for i, deployment in enumerate(self.deployments):
            for destination in deployment.destinations:
                if destination not in self.destinations:
                    raise ValueError(
                        f"deployments[{i}] ({deployment.name}): unknown destination "
                        f"{destination!r}; configured: {sorted(self.destinations) or 'none'}"
                    )
        return self

    @model_validator(mode="after")
    def _correlation_key_present(self) -> Settings:
        if self.log_correlation_key_env is not None and len(os.environ.get(self.log_correlation_key_env, "")) < 16:
            raise ValueError(
                f"log_correlation_key_env: environment variable {self.log_correlation_key_env} must hold "
                "at least 16 characters"
            )
        return self

    @property
    def log_correlation_key(self) -> bytes:
        """The key of study correlation ids (:func:`hounsfield.logs.study_correlation_id`)."""
        if self.log_correlation_key_env is not None:
            return os.environ[self.log_correlation_key_env].encode()
        return self.uid_root.encode()

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, SQLite under ``data_dir`` by default."""
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'hounsfield.db'}"

    @property
    def broker_url(self) -> str:
        """The Redis URL, the local redis-server's when none is configured."""
        return self.redis_url or f"redis://127.0.0.1:{self.local_redis_port}/0"

    @property
    def metrics_urls(self) -> dict[str, str | None]:
        """Where each process serves its Prometheus metrics (None: the listener or the worker without a
        ``metrics_port``); the registry's are on its API port unless ``registry.metrics_port`` is set."""

        def url(host: str, port: int | None) -> str | None:
            shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # where a scraper on this host connects
            return None if port is None else f"http://{shown}:{port}/metrics"

        return {
            "listener": url(self.listener.host, self.listener.metrics_port),
            "worker": url(self.worker.metrics_host, self.worker.metrics_port),
            "registry": url(self.registry.host, self.registry.metrics_port or self.registry.port),
        }


def _format_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def _unknown_env_keys(environ: dict[str, str]) -> list[str]:
    known = {name.upper() for name in Settings.model_fields} | {"CONFIG"}
    unknown = []
    for key in environ:
        if key.startswith(ENV_PREFIX):
            head = key[len(ENV_PREFIX) :].split("__", 1)[0]
            if head not in known:
                unknown.append(key)
    return sorted(unknown)


def load_settings(config_path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (``config_path`` or ``$HOUNSFIELD_CONFIG``) and the environment.

    Raises
    ------
    ConfigurationInvalid
        With one line per bad key, e.g. ``listener.port: Input should be less than or equal to 65535``.
    """
    path = config_path or os.environ.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    source = "defaults and environment"
    if path:
        path = Path(path)
        source = f"{path} and environment"
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationInvalid(f"cannot read configuration file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigurationInvalid(f"configuration file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigurationInvalid(f"configuration file {path} must hold a mapping at the top level")
        data = loaded or {}
        base = path.parent.resolve()
        for deployment in data.get("deployments") or []:
            for key in ("model_path", "map_path", "application_root"):
                if isinstance(deployment, dict) and deployment.get(key):
                    given = Path(str(deployment[key]))
                    if not given.is_absolute():
                        deployment[key] = str(base / given)
    unknown = _unknown_env_keys(dict(os.environ))
    if unknown:
        raise ConfigurationInvalid(
            f"invalid configuration ({source}):\n" + "\n".join(f"  {k}: unknown key" for k in unknown)
        )
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigurationInvalid(_format_error(exc, source)) from exc
