"""GitOps detection from metadata, and the Argo CD ignoreDifferences snippet for the docs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from geopin.core import workloads
from geopin.core.gitops import ARGO_CD, ARGO_IGNORE_DIFFERENCES_SNIPPET, FLUX, Evidence, evidence, managed_by
from geopin.io import kube


def meta(
    labels: dict[str, Any] | None = None,
    annotations: dict[str, Any] | None = None,
    managers: list[str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "web", "namespace": "shop"}
    if labels is not None:
        metadata["labels"] = labels
    if annotations is not None:
        metadata["annotations"] = annotations
    if managers is not None:
        metadata["managedFields"] = [
            {"manager": m, "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1"} for m in managers
        ]
    return metadata


TRACKING = {"argocd.argoproj.io/tracking-id": "shop:apps/Deployment:shop/web"}
KUSTOMIZE = {"kustomize.toolkit.fluxcd.io/name": "apps", "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}
HELMRELEASE = {"helm.toolkit.fluxcd.io/name": "web", "helm.toolkit.fluxcd.io/namespace": "shop"}
INSTANCE = {"app.kubernetes.io/instance": "shop"}
HELM_INSTALL = {"meta.helm.sh/release-name": "web", "meta.helm.sh/release-namespace": "shop"}


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        # Nothing, or only other tools.
        (meta(), None),
        (meta(labels={"app": "web"}, annotations={"deployment.kubernetes.io/revision": "3"}), None),
        (meta(managers=["kube-controller-manager", "kubectl-client-side-apply", "helm", "geopin"]), None),
        (meta(labels=INSTANCE, annotations=HELM_INSTALL, managers=["helm"]), None),  # plain `helm install`
        # Argo CD.
        (meta(annotations=TRACKING), ARGO_CD),
        (meta(labels=INSTANCE), ARGO_CD),  # default label tracking (before Argo CD 3.0)
        (meta(labels={"argocd.argoproj.io/instance": "shop"}), ARGO_CD),
        (meta(managers=["argocd-controller"]), ARGO_CD),
        (meta(managers=["argocd-application-controller"]), ARGO_CD),
        (meta(labels={**INSTANCE, "app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": "web-1.0"}), ARGO_CD),
        # Flux.
        (meta(labels=KUSTOMIZE), FLUX),
        (meta(labels=HELMRELEASE), FLUX),
        (meta(labels={"helm.toolkit.fluxcd.io/name": "web"}), FLUX),
        (meta(managers=["kustomize-controller"]), FLUX),
        (meta(managers=["helm-controller"]), FLUX),
        (meta(labels={"kustomize.toolkit.fluxcd.io/name": "apps"}), None),  # only with the namespace label
        # A Helm chart's instance label does not outweigh Flux's own evidence.
        (meta(labels={**INSTANCE, **HELMRELEASE}, annotations=HELM_INSTALL, managers=["helm-controller"]), FLUX),
        (meta(labels={**INSTANCE, **KUSTOMIZE}), FLUX),
        (meta(labels=INSTANCE, managers=["kustomize-controller"]), FLUX),
        # Both tools: the one writing (managedFields) wins, else Argo CD.
        (meta(labels=KUSTOMIZE, annotations=TRACKING, managers=["kustomize-controller"]), FLUX),
        (meta(labels=KUSTOMIZE, annotations=TRACKING, managers=["argocd-controller"]), ARGO_CD),
        (meta(labels=KUSTOMIZE, annotations=TRACKING), ARGO_CD),
        (meta(managers=["argocd-controller", "kustomize-controller"]), ARGO_CD),
    ],
)
def test_managed_by(metadata: dict[str, Any], expected: str | None) -> None:
    assert managed_by(metadata) == expected


@pytest.mark.parametrize(
    "metadata",
    [
        {"labels": None, "annotations": None, "managedFields": None},
        {"labels": "x", "annotations": ["y"], "managedFields": "z"},
        {"labels": {"app.kubernetes.io/instance": ""}},  # empty values are no evidence
        {"labels": {"app.kubernetes.io/instance": 3}},
        {"annotations": {"argocd.argoproj.io/tracking-id": None}},
        {"managedFields": [None, "argocd-controller", {"manager": 5}, {"operation": "Update"}]},
    ],
)
def test_malformed_metadata_is_no_evidence(metadata: dict[str, Any]) -> None:
    assert evidence(metadata) == ()
    assert managed_by(metadata) is None


def test_evidence_describes_what_was_seen() -> None:
    found = evidence(
        meta(labels={**KUSTOMIZE, **INSTANCE}, annotations=TRACKING, managers=["argocd-controller", "geopin"])
    )
    assert found == (
        Evidence(ARGO_CD, "annotation", "argocd.argoproj.io/tracking-id", "shop:apps/Deployment:shop/web"),
        Evidence(FLUX, "label", "kustomize.toolkit.fluxcd.io/name", "flux-system/apps"),
        Evidence(ARGO_CD, "managedFields", "argocd-controller"),
        Evidence(ARGO_CD, "label", "app.kubernetes.io/instance", "shop", strong=False),
    )
    assert [str(e) for e in found] == [
        "annotation argocd.argoproj.io/tracking-id=shop:apps/Deployment:shop/web",
        "label kustomize.toolkit.fluxcd.io/name=flux-system/apps",
        "managedFields manager argocd-controller",
        "label app.kubernetes.io/instance=shop",
    ]


def test_repeated_managers_are_reported_once() -> None:
    found = evidence(meta(managers=["kustomize-controller", "kustomize-controller"]))
    assert found == (Evidence(FLUX, "managedFields", "kustomize-controller"),)


def test_works_on_read_only_mappings() -> None:
    from types import MappingProxyType

    metadata = MappingProxyType({"labels": MappingProxyType(dict(KUSTOMIZE))})
    assert managed_by(metadata) == FLUX


SIGNALS = st.fixed_dictionaries(
    {},
    optional={
        "tracking": st.just(TRACKING),
        "kustomize": st.just(KUSTOMIZE),
        "helmrelease": st.just(HELMRELEASE),
        "instance": st.just(INSTANCE),
        "helm_install": st.just(HELM_INSTALL),
        "noise": st.dictionaries(st.from_regex(r"\A[a-z]{1,8}\.example/[a-z]{1,8}\Z"), st.just("v"), max_size=3),
    },
)
MANAGERS = st.lists(
    st.sampled_from(
        ["argocd-controller", "argocd-application-controller", "kustomize-controller", "helm-controller", "kubectl"]
    ),
    max_size=4,
)


@given(SIGNALS, SIGNALS, MANAGERS)
def test_result_is_justified_by_evidence(
    labels_from: dict[str, Any], annotations_from: dict[str, Any], managers: list[str]
) -> None:
    labels = {k: v for part in labels_from.values() for k, v in part.items()}
    annotations = {k: v for part in annotations_from.values() for k, v in part.items()}
    metadata = meta(labels=labels, annotations=annotations, managers=managers)
    result = managed_by(metadata)
    found = evidence(metadata)
    assert result in (None, ARGO_CD, FLUX)
    assert (result is None) is (found == ())
    if result is not None:
        assert any(e.tool == result for e in found)
    # Strong evidence of a single tool always decides.
    strong = {e.tool for e in found if e.strong}
    if len(strong) == 1:
        assert result in strong
    # The order of managedFields entries never changes the answer.
    assert managed_by(meta(labels=labels, annotations=annotations, managers=managers[::-1])) == result


# --------------------------------------------------------------------------- the snippet


def test_snippet_is_an_application_trusting_geopins_field_manager() -> None:
    doc = yaml.safe_load(ARGO_IGNORE_DIFFERENCES_SNIPPET)
    assert doc["apiVersion"] == "argoproj.io/v1alpha1"
    assert doc["kind"] == "Application"
    rules = doc["spec"]["ignoreDifferences"]
    assert {(r["group"], r["kind"]) for r in rules} == {
        ("apps", "Deployment"),
        ("apps", "StatefulSet"),
        ("apps", "DaemonSet"),
        ("apps", "ReplicaSet"),
        ("batch", "CronJob"),
    }
    for rule in rules:
        assert rule["managedFieldsManagers"] == [kube.FIELD_MANAGER]
    assert "RespectIgnoreDifferences=true" in doc["spec"]["syncPolicy"]["syncOptions"]


def test_snippet_jq_alternative_is_valid_when_uncommented() -> None:
    lines = ARGO_IGNORE_DIFFERENCES_SNIPPET.splitlines()
    alternative = [line for line in lines if line.startswith(("    # - ", "    #   "))]
    assert len(alternative) == 14
    uncommented = "\n".join(line.replace("    # ", "    ", 1) for line in alternative)
    rules = yaml.safe_load("ignoreDifferences:\n" + uncommented)["ignoreDifferences"]
    assert {(r["group"], r["kind"]) for r in rules} == {("apps", "Deployment"), ("batch", "CronJob")}
    paths = [p for r in rules for p in r["jqPathExpressions"]]
    assert ".spec.template.spec.containers[].image" in paths
    assert ".spec.jobTemplate.spec.template.spec.containers[].image" in paths
    for annotation in (workloads.ANNOTATION_ORIGINAL_IMAGES, workloads.ANNOTATION_PINNED_REGION):
        assert sum(f'.metadata.annotations["{annotation}"]' == p for p in paths) == 2
