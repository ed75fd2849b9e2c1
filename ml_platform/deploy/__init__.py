"""Deployment targets for the model server: where a model version goes to serve traffic.

- ``local``: the server as a background process on 127.0.0.1, following the registry's champion alias;
- ``replicas``: N server processes on this machine behind haproxy, each pinned to the deployed version, a
  new version rolled out one replica at a time without a failed request;
- ``kubernetes``: render the kustomize overlays in ``deploy/k8s``, pin a model version, server-side
  apply, wait for the rollout. The ``kubernetes`` client is imported only when a target connects.
"""
