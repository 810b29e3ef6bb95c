// Command kube-scheduler is upstream's kube-scheduler, built from the k8s.io/kubernetes module
// (k8s.io/kubernetes/cmd/kube-scheduler) so redis-pair's tests run against the real thing.
// Only the imports upstream's main makes are repeated here; nothing is changed.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // the version metric
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	os.Exit(cli.Run(app.NewSchedulerCommand()))
}
