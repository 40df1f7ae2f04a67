// The node's Kubernetes components in one binary: kubelet, kube-controller-manager and
// kube-scheduler share most of their packages, so one build and one link cost far less than
// three. The component is chosen by the name the binary is called by (build.sh makes symlinks
// kubelet and kubelet-v1.33.13, ...), or by the first argument: `kube-node kubelet --help`.
//
// A fourth command, remove-pods, is what node-down.sh needs and no Debian package has (there is
// no crictl): it stops and removes every pod sandbox of a CRI runtime, so that the runtime
// releases the pods' network namespaces and IP addresses and no container shim outlives the node.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	_ "time/tzdata" // CronJob time zones, as the upstream controller manager embeds them

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	remote "k8s.io/cri-client/pkg"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var components = map[string]func() *cobra.Command{
	"kubelet":                 kubelet.NewKubeletCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
}

// component names the component a program name stands for: "kubelet" or "kubelet-v1.33.13".
func component(program string) string {
	base := filepath.Base(program)
	if i := strings.Index(base, "-v"); i > 0 {
		base = base[:i]
	}
	return base
}

// removePods stops, then removes, every pod sandbox the runtime at endpoint knows; stopping a
// sandbox stops its containers and tears down its network.
func removePods(args []string) error {
	flags := flag.NewFlagSet("remove-pods", flag.ContinueOnError)
	endpoint := flags.String("endpoint", "", "the CRI socket, unix:///path")
	timeout := flags.Duration("timeout", time.Minute, "the time allowed for all of it")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *endpoint == "" {
		return fmt.Errorf("--endpoint is required")
	}
	runtime, err := remote.NewRemoteRuntimeService(*endpoint, *timeout, nil, nil)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", *endpoint, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	sandboxes, err := runtime.ListPodSandbox(ctx, nil)
	if err != nil {
		return fmt.Errorf("listing pod sandboxes: %w", err)
	}
	for _, sandbox := range sandboxes {
		name := sandbox.GetMetadata().GetNamespace() + "/" + sandbox.GetMetadata().GetName()
		if err := runtime.StopPodSandbox(ctx, sandbox.Id); err != nil {
			return fmt.Errorf("stopping pod %s: %w", name, err)
		}
		if err := runtime.RemovePodSandbox(ctx, sandbox.Id); err != nil {
			return fmt.Errorf("removing pod %s: %w", name, err)
		}
		fmt.Printf("removed pod %s\n", name)
	}
	return nil
}

func main() {
	name := component(os.Args[0])
	if _, ok := components[name]; !ok && len(os.Args) > 1 {
		// Called by its own name: the component is the first argument, and the rest is its.
		name = os.Args[1]
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	if name == "remove-pods" {
		if err := removePods(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "remove-pods:", err)
			os.Exit(1)
		}
		return
	}
	newCommand, ok := components[name]
	if !ok {
		fmt.Fprintln(os.Stderr, "usage: kube-node kubelet|kube-controller-manager|kube-scheduler|remove-pods [FLAGS]")
		os.Exit(2)
	}
	os.Exit(cli.Run(newCommand()))
}
