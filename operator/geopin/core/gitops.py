"""Which GitOps tool (if any) manages a workload: the source of the ``GitOpsDriftRisk`` event.

Pure: reads an object's ``metadata`` (labels, annotations, ``managedFields[].manager``), writes nothing.
In Patch mode geopin rewrites a workload's images; a GitOps tool that owns the workload sees the change
as drift and may revert it on its next sync, so geopin warns and the docs show the snippet below.

What was checked:

- Argo CD resource tracking (argo-cd.readthedocs.io ``user-guide/resource_tracking``): ``label`` tracking
  sets ``app.kubernetes.io/instance`` to the Application name (the default before Argo CD 3.0; the docs note
  that Helm charts and operators set the same label), ``annotation`` tracking (the default since 3.0) and
  ``annotation+label`` set ``argocd.argoproj.io/tracking-id`` (``<app>:<group>/<kind>:<ns>/<name>``); the docs'
  example of a custom tracking label is ``argocd.argoproj.io/instance``. Server-side-apply syncs use the
  field manager ``argocd-controller`` (``common.ArgoCDSSAManager``); ``argocd-application-controller`` is
  the controller's default manager name for other writes.
- Flux: kustomize-controller labels every object it applies with ``kustomize.toolkit.fluxcd.io/name`` and
  ``kustomize.toolkit.fluxcd.io/namespace`` and applies server-side as ``kustomize-controller``; helm-controller's
  post-renderer adds ``helm.toolkit.fluxcd.io/name`` (and ``/namespace``); it writes as ``helm-controller``.
- Argo CD ``ignoreDifferences`` (``user-guide/diffing``): ``managedFieldsManagers`` lists managers whose fields
  win over Git and are not shown as diffs; ``jqPathExpressions`` ignores paths; the ``RespectIgnoreDifferences=true``
  sync option keeps a sync from reverting ignored fields.

Rules, strongest first: a tool's own tracking annotation or labels, or its field manager, identify it; when
both tools show such evidence, the one present in ``managedFields`` wins, then Argo CD (deterministic). The bare
``app.kubernetes.io/instance`` label counts for Argo CD only without other evidence and without Helm's release
annotation ``meta.helm.sh/release-name`` (``helm install`` sets the label too, Argo CD's ``helm template`` does not
add the annotation). It can still be a Helm chart or an operator's label: the event says which evidence it saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ARGO_CD",
    "ARGO_IGNORE_DIFFERENCES_SNIPPET",
    "FLUX",
    "Evidence",
    "evidence",
    "managed_by",
]

ARGO_CD = "Argo CD"
FLUX = "Flux"

ARGOCD_INSTANCE_LABEL = "app.kubernetes.io/instance"
ARGOCD_CUSTOM_INSTANCE_LABEL = "argocd.argoproj.io/instance"
ARGOCD_TRACKING_ANNOTATION = "argocd.argoproj.io/tracking-id"
ARGOCD_MANAGERS = frozenset({"argocd-controller", "argocd-application-controller"})
FLUX_KUSTOMIZE_NAME_LABEL = "kustomize.toolkit.fluxcd.io/name"
FLUX_KUSTOMIZE_NAMESPACE_LABEL = "kustomize.toolkit.fluxcd.io/namespace"
FLUX_HELM_NAME_LABEL = "helm.toolkit.fluxcd.io/name"
FLUX_MANAGERS = frozenset({"kustomize-controller", "helm-controller"})
HELM_RELEASE_ANNOTATION = "meta.helm.sh/release-name"


@dataclass(frozen=True, slots=True)
class Evidence:
    """One sign of a GitOps tool: ``source`` is ``label``, ``annotation`` or ``managedFields``."""

    tool: str
    source: str
    key: str
    value: str = ""
    strong: bool = True

    def __str__(self) -> str:
        if self.source == "managedFields":
            return f"managedFields manager {self.key}"
        return f"{self.source} {self.key}={self.value}"


def _strings(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str) and v}


def _managers(metadata: Mapping[str, Any]) -> list[str]:
    entries = metadata.get("managedFields")
    if not isinstance(entries, list):
        return []
    found: list[str] = []
    for entry in entries:
        manager = entry.get("manager") if isinstance(entry, Mapping) else None
        if isinstance(manager, str) and manager not in found:
            found.append(manager)
    return found


def evidence(metadata: Mapping[str, Any]) -> tuple[Evidence, ...]:
    """Every sign of Argo CD or Flux in an object's metadata, strong ones first, in a stable order."""
    labels = _strings(metadata.get("labels"))
    annotations = _strings(metadata.get("annotations"))
    found: list[Evidence] = []
    if ARGOCD_TRACKING_ANNOTATION in annotations:
        found.append(
            Evidence(ARGO_CD, "annotation", ARGOCD_TRACKING_ANNOTATION, annotations[ARGOCD_TRACKING_ANNOTATION])
        )
    if ARGOCD_CUSTOM_INSTANCE_LABEL in labels:
        found.append(Evidence(ARGO_CD, "label", ARGOCD_CUSTOM_INSTANCE_LABEL, labels[ARGOCD_CUSTOM_INSTANCE_LABEL]))
    if FLUX_KUSTOMIZE_NAME_LABEL in labels and FLUX_KUSTOMIZE_NAMESPACE_LABEL in labels:
        namespaced = f"{labels[FLUX_KUSTOMIZE_NAMESPACE_LABEL]}/{labels[FLUX_KUSTOMIZE_NAME_LABEL]}"
        found.append(Evidence(FLUX, "label", FLUX_KUSTOMIZE_NAME_LABEL, namespaced))
    if FLUX_HELM_NAME_LABEL in labels:
        found.append(Evidence(FLUX, "label", FLUX_HELM_NAME_LABEL, labels[FLUX_HELM_NAME_LABEL]))
    for manager in _managers(metadata):
        if manager in ARGOCD_MANAGERS:
            found.append(Evidence(ARGO_CD, "managedFields", manager))
        elif manager in FLUX_MANAGERS:
            found.append(Evidence(FLUX, "managedFields", manager))
    if ARGOCD_INSTANCE_LABEL in labels and HELM_RELEASE_ANNOTATION not in annotations:
        found.append(Evidence(ARGO_CD, "label", ARGOCD_INSTANCE_LABEL, labels[ARGOCD_INSTANCE_LABEL], strong=False))
    return tuple(found)


def managed_by(metadata: Mapping[str, Any]) -> str | None:
    """``"Argo CD"``, ``"Flux"`` or None for a workload's ``metadata`` (see the module docstring for the rules)."""
    found = evidence(metadata)
    strong = {e.tool for e in found if e.strong}
    if len(strong) == 1:
        return strong.pop()
    if len(strong) > 1:
        writing = {e.tool for e in found if e.source == "managedFields"}
        return writing.pop() if len(writing) == 1 else ARGO_CD
    return ARGO_CD if found else None


# The field manager geopin patches with (geopin.io.kube.FIELD_MANAGER; not imported: kube does I/O).
_GEOPIN_MANAGER = "geopin"

ARGO_IGNORE_DIFFERENCES_SNIPPET = f"""\
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: my-app
  namespace: argocd
spec:
  # ... project, source, destination as before ...
  ignoreDifferences:
    # Fields that geopin writes (images and its geopin.io/* annotations) are not drift.
    - group: apps
      kind: Deployment
      managedFieldsManagers: [{_GEOPIN_MANAGER}]
    - group: apps
      kind: StatefulSet
      managedFieldsManagers: [{_GEOPIN_MANAGER}]
    - group: apps
      kind: DaemonSet
      managedFieldsManagers: [{_GEOPIN_MANAGER}]
    - group: apps
      kind: ReplicaSet
      managedFieldsManagers: [{_GEOPIN_MANAGER}]
    - group: batch
      kind: CronJob
      managedFieldsManagers: [{_GEOPIN_MANAGER}]
    # Alternative without managedFields: ignore the paths themselves (jqPathExpressions).
    # - group: apps
    #   kind: Deployment
    #   jqPathExpressions:
    #     - .spec.template.spec.containers[].image
    #     - .spec.template.spec.initContainers[]?.image
    #     - .metadata.annotations["geopin.io/original-images"]
    #     - .metadata.annotations["geopin.io/pinned-region"]
    # - group: batch
    #   kind: CronJob
    #   jqPathExpressions:
    #     - .spec.jobTemplate.spec.template.spec.containers[].image
    #     - .spec.jobTemplate.spec.template.spec.initContainers[]?.image
    #     - .metadata.annotations["geopin.io/original-images"]
    #     - .metadata.annotations["geopin.io/pinned-region"]
  syncPolicy:
    syncOptions:
      # Without this a sync still applies Git's image and undoes the pin.
      - RespectIgnoreDifferences=true
"""
