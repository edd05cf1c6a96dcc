"""Drives skiff-server with the official Kubernetes Python client: list, create, watch."""
import sys

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()

names = [n.metadata.name for n in core.list_namespace().items]
assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= set(names), names

start = core.list_namespaced_config_map("default").metadata.resource_version
core.create_namespaced_config_map(
    "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py"), data={"a": "1"})
)
core.patch_namespaced_config_map("py", "default", {"data": {"a": "2"}})
seen = []
for event in watch.Watch().stream(
    core.list_namespaced_config_map, "default", resource_version=start, timeout_seconds=3
):
    seen.append((event["type"], event["object"].metadata.name, event["object"].data.get("a")))
    if len(seen) == 2:
        break
assert seen == [("ADDED", "py", "1"), ("MODIFIED", "py", "2")], seen

deployment = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="pyweb"),
    spec=client.V1DeploymentSpec(
        replicas=2,
        selector=client.V1LabelSelector(match_labels={"app": "pyweb"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "pyweb"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox:1.36")]),
        ),
    ),
)
apps.create_namespaced_deployment("default", deployment)
got = apps.read_namespaced_deployment("pyweb", "default")
assert got.spec.replicas == 2 and got.spec.strategy.type == "RollingUpdate", got.spec
assert [d.metadata.name for d in apps.list_deployment_for_all_namespaces().items] == ["pyweb"]
try:
    core.read_namespaced_config_map("nope", "default")
    raise AssertionError("expected 404")
except client.exceptions.ApiException as e:
    assert e.status == 404, e.status
print("python client OK")
