"""Creates ConfigMaps as fast as it can and prints each name once the server acknowledged it."""
import sys

from kubernetes import client, config

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
i = 0
while True:
    name = f"w-{i}"
    core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"i": str(i)})
    )
    print(name, flush=True)
    i += 1
