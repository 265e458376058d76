// The two small programs a local node needs besides kubelet and containerd: the process of the
// sandbox and workload images (geopin-pod) and the OCI runtime wrapper (geopin-runc). No
// dependencies; hack/node/build.sh builds them with the kubelet.
module geopin.io/node

go 1.25.0
