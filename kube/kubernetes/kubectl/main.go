// Command kubectl is upstream's kubectl at the control plane's own version
// (k8s.io/kubernetes/cmd/kubectl), so a client of the same minor version as the server is at
// hand; scripts/kube-tools.sh's pinned kubectl stays what the tests use until they move.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // client auth plugins, as upstream's main
)

func main() {
	// Verbosity first, so klog is set during the command's construction (upstream does the same).
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) //nolint:errcheck
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
