// Command etcd is upstream's etcd server (go.etcd.io/etcd/server/v3, whose main.go is this same
// call), the storage of the real control plane redis-pair's tests run against.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
