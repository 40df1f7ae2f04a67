// Command previews renders what the preview-environment examples (examples/previews/) make for
// a set of open pull requests, with the template engines the GitOps tools themselves use:
//
//	go run . argocd APPLICATIONSET.yaml PULLS.json   # the Applications an ApplicationSet makes
//	go run . flux RESOURCESET.yaml PULLS.json        # the objects a Flux Operator ResourceSet makes
//
// PULLS.json is a JSON array of open pull requests as the Git host reports them:
// {"number": 7, "title": "...", "branch": "...", "targetBranch": "main", "headSha": "<40 hex>",
// "author": "...", "labels": ["preview"]}. The rendered objects are printed as one JSON array.
//
// Argo CD (goTemplate: true) executes every string of spec.template as a Go text/template with
// the sprig functions (less the ones reading the environment or the network) and the pull
// request generator's parameters. The Flux Operator serializes each of spec.resources to YAML
// and executes it as one text/template with the << >> delimiters, slim-sprig's hermetic
// functions and an `inputs` function returning the GitHubPullRequest provider's inputs.
// Test infrastructure for tests/previews.rs: it renders, it never talks to a cluster.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig/v3"
	slimsprig "github.com/go-task/slim-sprig/v3"
	"sigs.k8s.io/yaml"
)

// pull is one open pull request.
type pull struct {
	Number       int      `json:"number"`
	Title        string   `json:"title"`
	Branch       string   `json:"branch"`
	TargetBranch string   `json:"targetBranch"`
	HeadSha      string   `json:"headSha"`
	Author       string   `json:"author"`
	Labels       []string `json:"labels"`
}

func main() {
	if len(os.Args) != 4 {
		fail(fmt.Errorf("usage: previews argocd|flux MANIFEST.yaml PULLS.json"))
	}
	manifest, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail(err)
	}
	pullsJSON, err := os.ReadFile(os.Args[3])
	if err != nil {
		fail(err)
	}
	var pulls []pull
	if err := json.Unmarshal(pullsJSON, &pulls); err != nil {
		fail(fmt.Errorf("reading pull requests: %w", err))
	}
	var out []any
	switch os.Args[1] {
	case "argocd":
		out, err = renderApplicationSet(manifest, pulls)
	case "flux":
		out, err = renderResourceSet(manifest, pulls)
	default:
		err = fmt.Errorf("unknown tool %q: argocd or flux", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
	if out == nil {
		out = []any{}
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		fail(err)
	}
	fmt.Println(string(b))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "previews:", err)
	os.Exit(1)
}

// document returns the one object of kind `kind` in a multi-document YAML file.
func document(manifest []byte, kind string) (map[string]any, error) {
	for _, doc := range strings.Split(string(manifest), "\n---") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return nil, err
		}
		if obj["kind"] == kind {
			return obj, nil
		}
	}
	return nil, fmt.Errorf("no %s in the manifest", kind)
}

func field(obj map[string]any, path ...string) (any, error) {
	var cur any = obj
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s is not an object", strings.Join(path, "."))
		}
		cur, ok = m[p]
		if !ok {
			return nil, fmt.Errorf("%s is missing", strings.Join(path, "."))
		}
	}
	return cur, nil
}

// argoFuncs is the function map of Argo CD's goTemplate mode: sprig's, without the functions
// that read the controller's environment or resolve names.
func argoFuncs() template.FuncMap {
	funcs := sprig.TxtFuncMap()
	for _, unsafe := range []string{"env", "expandenv", "getHostByName"} {
		delete(funcs, unsafe)
	}
	return funcs
}

// renderApplicationSet renders spec.template once per pull request with the parameters of the
// pull request generator, as Argo CD does with goTemplate: true.
func renderApplicationSet(manifest []byte, pulls []pull) ([]any, error) {
	appset, err := document(manifest, "ApplicationSet")
	if err != nil {
		return nil, err
	}
	if goTemplate, _ := field(appset, "spec", "goTemplate"); goTemplate != true {
		return nil, fmt.Errorf("spec.goTemplate must be true")
	}
	options := []string{}
	if raw, err := field(appset, "spec", "goTemplateOptions"); err == nil {
		list, ok := raw.([]any)
		if !ok {
			return nil, fmt.Errorf("spec.goTemplateOptions is not a list")
		}
		for _, o := range list {
			options = append(options, fmt.Sprint(o))
		}
	}
	tmpl, err := field(appset, "spec", "template")
	if err != nil {
		return nil, err
	}
	var apps []any
	for _, p := range pulls {
		params := map[string]any{
			"number":           strconv.Itoa(p.Number),
			"title":            p.Title,
			"branch":           p.Branch,
			"target_branch":    p.TargetBranch,
			"head_sha":         p.HeadSha,
			"head_short_sha":   shortSha(p.HeadSha, 8),
			"head_short_sha_7": shortSha(p.HeadSha, 7),
			"author":           p.Author,
			"labels":           p.Labels,
		}
		rendered, err := renderStrings(tmpl, params, options)
		if err != nil {
			return nil, fmt.Errorf("pull request %d: %w", p.Number, err)
		}
		app, ok := rendered.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("spec.template is not an object")
		}
		app["apiVersion"] = "argoproj.io/v1alpha1"
		app["kind"] = "Application"
		apps = append(apps, app)
	}
	return apps, nil
}

func shortSha(sha string, n int) string {
	if len(sha) < n {
		return sha
	}
	return sha[:n]
}

// renderStrings executes every string inside v as a template of its own.
func renderStrings(v any, params map[string]any, options []string) (any, error) {
	switch t := v.(type) {
	case string:
		tp, err := template.New("").Funcs(argoFuncs()).Option(options...).Parse(t)
		if err != nil {
			return nil, err
		}
		var b strings.Builder
		if err := tp.Execute(&b, params); err != nil {
			return nil, err
		}
		return b.String(), nil
	case map[string]any:
		out := map[string]any{}
		for k, x := range t {
			r, err := renderStrings(x, params, options)
			if err != nil {
				return nil, err
			}
			out[k] = r
		}
		return out, nil
	case []any:
		out := make([]any, 0, len(t))
		for _, x := range t {
			r, err := renderStrings(x, params, options)
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
		return out, nil
	default:
		return v, nil
	}
}

// renderResourceSet renders each of spec.resources once per pull request with the inputs a
// GitHubPullRequest ResourceSetInputProvider exports, as the Flux Operator does.
func renderResourceSet(manifest []byte, pulls []pull) ([]any, error) {
	provider, err := document(manifest, "ResourceSetInputProvider")
	if err != nil {
		return nil, err
	}
	if t, _ := field(provider, "spec", "type"); t != "GitHubPullRequest" {
		return nil, fmt.Errorf("the ResourceSetInputProvider must be of type GitHubPullRequest")
	}
	set, err := document(manifest, "ResourceSet")
	if err != nil {
		return nil, err
	}
	raw, err := field(set, "spec", "resources")
	if err != nil {
		return nil, err
	}
	resources, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("spec.resources is not a list")
	}
	defaults := map[string]any{}
	if d, err := field(provider, "spec", "defaultValues"); err == nil {
		if m, ok := d.(map[string]any); ok {
			defaults = m
		}
	}
	var objects []any
	for _, p := range pulls {
		inputs := map[string]any{}
		for k, v := range defaults {
			inputs[k] = v
		}
		inputs["id"] = strconv.Itoa(p.Number)
		inputs["sha"] = p.HeadSha
		inputs["branch"] = p.Branch
		inputs["author"] = p.Author
		inputs["title"] = p.Title
		for i, r := range resources {
			obj, err := renderResource(r, inputs)
			if err != nil {
				return nil, fmt.Errorf("pull request %d, resources[%d]: %w", p.Number, i, err)
			}
			objects = append(objects, obj)
		}
	}
	return objects, nil
}

func renderResource(resource any, inputs map[string]any) (any, error) {
	js, err := json.Marshal(resource)
	if err != nil {
		return nil, err
	}
	y, err := yaml.JSONToYAML(js)
	if err != nil {
		return nil, err
	}
	tp, err := template.New("resourceset").
		Delims("<<", ">>").
		Funcs(slimsprig.HermeticTxtFuncMap()).
		Funcs(template.FuncMap{"inputs": func() any { return inputs }}).
		Option("missingkey=error").
		Parse(string(y))
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	if err := tp.Execute(&b, nil); err != nil {
		return nil, err
	}
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(b.String()), &obj); err != nil {
		return nil, fmt.Errorf("the rendered resource is not YAML: %w\n%s", err, b.String())
	}
	return obj, nil
}
