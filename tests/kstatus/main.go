// Command kstatus prints how kstatus, and Flux's CEL health checks, judge Kubernetes objects.
//
// Used by tests/gitops_health.rs on gitdeployments captured from a real API server in every
// state, so that the verdicts documented in docs/gitops.md come from the real libraries:
//
//   - kstatus: sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, what `kubectl wait`-style tools,
//     Flux's `healthChecks`/`wait: true` (through its fork of the same package) and
//     cli-utils' appliers use for custom resources;
//   - with -flux FILE: the status reader kustomize-controller builds for `.spec.healthCheckExprs`
//     (github.com/fluxcd/pkg/runtime/cel, Flux >= 2.5), with the expressions of the
//     Kustomization in FILE that apply to the object's apiVersion and kind.
//
// Usage: kstatus [-flux kustomization.yaml] OBJECT.json...
//
// Output, one line per object file: "<file> <kstatus status>", plus " <flux status>" with -flux.
// Statuses are kstatus' names: InProgress, Failed, Current, Terminating, NotFound, Unknown.
// A CEL expression that cannot be evaluated (for example a field that does not exist yet) gives
// Unknown, as in kustomize-controller, which then keeps polling until its timeout; the error
// goes to stderr.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/fluxcd/pkg/apis/kustomize"
	fluxcel "github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	fluxFile := flag.String("flux", "", "a file holding a Flux Kustomization whose spec.healthCheckExprs to evaluate too")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: kstatus [-flux kustomization.yaml] OBJECT.json...")
		os.Exit(2)
	}
	var checks []kustomize.CustomHealthCheck
	if *fluxFile != "" {
		var err error
		if checks, err = healthCheckExprs(*fluxFile); err != nil {
			fail("%s: %v", *fluxFile, err)
		}
	}
	ctx := context.Background()
	for _, file := range flag.Args() {
		u, err := readObject(file)
		if err != nil {
			fail("%s: %v", file, err)
		}
		res, err := status.Compute(u)
		if err != nil {
			fail("%s: kstatus: %v", file, err)
		}
		line := fmt.Sprintf("%s %s", file, res.Status)
		if *fluxFile != "" {
			line += " " + fluxStatus(ctx, checks, u, file)
		}
		fmt.Println(line)
	}
}

// healthCheckExprs returns spec.healthCheckExprs of the (first) Flux Kustomization in file.
func healthCheckExprs(file string) ([]kustomize.CustomHealthCheck, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var doc struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Spec       struct {
				HealthCheckExprs []kustomize.CustomHealthCheck `json:"healthCheckExprs"`
			} `json:"spec"`
		}
		if err := decoder.Decode(&doc); err != nil {
			return nil, fmt.Errorf("no Kustomization with spec.healthCheckExprs: %w", err)
		}
		gv, _ := schema.ParseGroupVersion(doc.APIVersion)
		if doc.Kind == "Kustomization" && gv.Group == "kustomize.toolkit.fluxcd.io" && len(doc.Spec.HealthCheckExprs) > 0 {
			return doc.Spec.HealthCheckExprs, nil
		}
	}
}

// fluxStatus is what kustomize-controller's CEL status reader (built from the Kustomization's
// healthCheckExprs, as PollerWithCustomHealthChecks does) reports for u.
func fluxStatus(ctx context.Context, checks []kustomize.CustomHealthCheck, u *unstructured.Unstructured, file string) string {
	newReader, err := fluxcel.NewStatusReader(checks)
	if err != nil {
		fail("healthCheckExprs: %v", err)
	}
	reader := newReader(meta.NewDefaultRESTMapper(nil))
	if !reader.Supports(u.GroupVersionKind().GroupKind()) {
		return "NoExpression"
	}
	rs, err := reader.ReadStatusForObject(ctx, nil, u)
	if err != nil {
		fail("%s: flux: %v", file, err)
	}
	if rs.Error != nil {
		fmt.Fprintf(os.Stderr, "%s: flux: %v\n", file, rs.Error)
	}
	return rs.Status.String()
}

func readObject(file string) (*unstructured.Unstructured, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	// Unstructured's own decoder, as client-go's: integers stay int64 (plain encoding/json would
	// make float64s, which kstatus' NestedInt64 refuses).
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		return nil, err
	}
	return u, nil
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(1)
}
