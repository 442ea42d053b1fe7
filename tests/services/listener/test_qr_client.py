"""The query/retrieve client on its own: the contexts a C-GET proposes, and DICOM TLS to a source."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import StoragePresentationContexts

from hounsfield.config import OutboundTLSSettings, QueryRetrieveSettings, SourceSettings
from hounsfield.listener.qr_client import QueryRetrieveClient, SourceUnavailable, StudyQuery, get_storage_contexts
from tests.pki import PKI, make_pki
from tests.services.listener.qr_source import PynetdicomSource
from tests.support import write_study


def _syntaxes_by_class(sop_classes: list[str]) -> dict[str, list[list[str]]]:
    contexts = get_storage_contexts(sop_classes)
    assert len(contexts) <= 127, "one of the 128 is the C-GET's own"
    grouped: dict[str, list[list[str]]] = {}
    for context in contexts:
        grouped.setdefault(str(context.abstract_syntax), []).append([str(ts) for ts in context.transfer_syntax])
    return grouped


def test_each_class_of_the_study_gets_one_context_per_transfer_syntax() -> None:
    (ct,) = _syntaxes_by_class([CTImageStorage]).values()
    assert all(len(group) == 1 for group in ct) and len(ct) > 10
    assert ct[:2] == [[ExplicitVRLittleEndian], [ImplicitVRLittleEndian]], "uncompressed first"
    assert len({group[0] for group in ct}) == len(ct)


def test_many_classes_share_the_128_contexts_and_every_syntax_stays_proposed() -> None:
    classes = [str(c.abstract_syntax) for c in StoragePresentationContexts][:40]
    grouped = _syntaxes_by_class(classes)
    assert list(grouped) == classes
    everything = {ts for ts in next(iter(grouped.values())) for ts in ts}
    for groups in grouped.values():
        assert groups[0] == [ExplicitVRLittleEndian] and len(groups) >= 2
        assert {ts for group in groups for ts in group} == everything, "the last context lists the rest"
    too_many = [generate_uid() for _ in range(300)]
    assert list(_syntaxes_by_class(too_many)) == too_many[:127], "one context each, the rest left out"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _server_context(cert: Path, key: Path, ca: Path, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    if maximum is not None:
        context.maximum_version = maximum
    return context


StartSource = Callable[[ssl.SSLContext], PynetdicomSource]


@pytest.fixture
def tls_source(tmp_path: Path) -> Iterator[StartSource]:
    """Starts pynetdicom sources with a server context (they require a client certificate)."""
    _, files = write_study(tmp_path / "ct", seed=91, shape=(2, 16, 16), accession_number="RQ0091")
    sources: list[PynetdicomSource] = []

    def start(context: ssl.SSLContext) -> PynetdicomSource:
        source = PynetdicomSource(files, ssl_context=context)
        source.start()
        sources.append(source)
        return source

    yield start
    for source in sources:
        source.stop()


def _client(port: int, tls: OutboundTLSSettings | None) -> QueryRetrieveClient:
    query = QueryRetrieveSettings(host="127.0.0.1", port=port, timeout_s=5, tls=tls)
    return QueryRetrieveClient("pacs", SourceSettings(ae_title="PYNDPACS", query=query), calling_ae="HOUNSFIELD")


def test_queries_go_over_tls_only_to_a_source_whose_certificate_chains_to_the_ca_bundle(
    tls_source: StartSource, pki: PKI
) -> None:
    start = tls_source
    client_cert = {"certificate": pki.client_cert, "private_key": pki.client_key}
    query = StudyQuery(accession_number="RQ0091")

    genuine = start(_server_context(pki.server_cert, pki.server_key, pki.ca))
    (study,) = _client(genuine.port, OutboundTLSSettings(ca_bundle=pki.ca, **client_cert)).find_studies(query)
    assert study.instance_count == 2
    with pytest.raises(SourceUnavailable, match="TLS handshake failed"):
        _client(genuine.port, OutboundTLSSettings(ca_bundle=pki.rogue_ca, **client_cert)).find_studies(query)
    named = OutboundTLSSettings(ca_bundle=pki.ca, server_hostname="pacs.elsewhere.example", **client_cert)
    with pytest.raises(SourceUnavailable, match="TLS handshake failed"):
        _client(genuine.port, named).find_studies(query)
    unnamed = named.model_copy(update={"check_hostname": False})
    assert len(_client(genuine.port, unnamed).find_studies(query)) == 1, "the chain alone, when asked"

    rogue = start(_server_context(pki.rogue_server_cert, pki.rogue_server_key, pki.ca))
    with pytest.raises(SourceUnavailable, match="TLS handshake failed"):
        _client(rogue.port, OutboundTLSSettings(ca_bundle=pki.ca, **client_cert)).find_studies(query)

    old = start(_server_context(pki.server_cert, pki.server_key, pki.ca, maximum=ssl.TLSVersion.TLSv1_2))
    assert _client(old.port, OutboundTLSSettings(ca_bundle=pki.ca, **client_cert)).find_studies(query)
    strict = OutboundTLSSettings(ca_bundle=pki.ca, minimum_version="1.3", **client_cert)
    with pytest.raises(SourceUnavailable, match="TLS handshake failed"):
        _client(old.port, strict).find_studies(query)
    assert len(genuine.identifiers) == 2 and not rogue.identifiers, "no query reached a peer that was not verified"


def test_tls_files_that_cannot_be_used_are_named(tmp_path: Path) -> None:
    client = _client(1, OutboundTLSSettings(ca_bundle=tmp_path / "missing.pem"))
    with pytest.raises(SourceUnavailable, match="its TLS settings cannot be used"):
        client.find_studies(StudyQuery(accession_number="RQ0092"))
