// Command podsecurity evaluates every pod a set of Kubernetes manifests would create with the
// Kubernetes project's own Pod Security admission checks (k8s.io/pod-security-admission), as
// the API server's admission plugin does, but offline.
//
// Usage:
//
//	podsecurity [-level privileged|baseline|restricted] [-version latest|v1.N] [FILE ...]
//
// It reads YAML (several documents) or JSON objects (a List's items, a JSON array) from each
// FILE, or from stdin when none is given. Each pod template (Pod, Deployment, StatefulSet,
// DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, PodTemplate) is evaluated at:
//   - -level/-version when given;
//   - else its Namespace's enforced policy (pod-security.kubernetes.io/enforce and
//     enforce-version labels), when the Namespace object is among the inputs and labelled;
//   - else restricted, latest: the strictest level, so an unlabelled or unknown namespace never
//     passes by default.
//
// Output: one JSON object per line on stdout for each violation (object, namespace, level,
// version, check, reason, detail); one JSON object per line on stderr for each pod template
// evaluated (object, namespace, level, version, violations). Exit status: 0 when no pod
// violates its level, 1 when one does, 2 when the input cannot be read.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// Violation is one failed check of one pod template.
type Violation struct {
	Object    string `json:"object"`
	Namespace string `json:"namespace"`
	Level     string `json:"level"`
	Version   string `json:"version"`
	Check     string `json:"check"`
	Reason    string `json:"reason"`
	Detail    string `json:"detail,omitempty"`
}

// Evaluated is one pod template and the policy it was held to.
type Evaluated struct {
	Object     string `json:"object"`
	Namespace  string `json:"namespace"`
	Level      string `json:"level"`
	Version    string `json:"version"`
	Violations int    `json:"violations"`
}

// podOf is a pod template found in a manifest: the object it belongs to and what admission sees.
type podOf struct {
	object    string
	namespace string
	meta      metav1.ObjectMeta
	spec      corev1.PodSpec
}

// fired records, in call order, the ID of each check the evaluator runs: EvaluatePod returns
// its results in the order it ran the checks, and CheckResult carries no ID of its own.
var fired []policy.CheckID

// identified wraps each check so that running it records its ID. The evaluator still decides
// which checks apply at a level and version (and which restricted check overrides which
// baseline one): only the reporting is added.
func identified(checks []policy.Check) []policy.Check {
	out := make([]policy.Check, 0, len(checks))
	for _, c := range checks {
		c := c
		versions := make([]policy.VersionedCheck, 0, len(c.Versions))
		for _, v := range c.Versions {
			v := v
			run := v.CheckPod
			v.CheckPod = func(meta *metav1.ObjectMeta, spec *corev1.PodSpec) policy.CheckResult {
				fired = append(fired, c.ID)
				return run(meta, spec)
			}
			versions = append(versions, v)
		}
		c.Versions = versions
		out = append(out, c)
	}
	return out
}

// documents decodes every top-level object of a YAML or JSON stream, unpacking Lists and arrays.
func documents(r io.Reader, name string) ([]map[string]interface{}, error) {
	decoder := utilyaml.NewYAMLOrJSONDecoder(bufio.NewReader(r), 4096)
	var objects []map[string]interface{}
	var unpack func(v interface{}) error
	unpack = func(v interface{}) error {
		switch doc := v.(type) {
		case nil:
			return nil
		case []interface{}:
			for _, item := range doc {
				if err := unpack(item); err != nil {
					return err
				}
			}
			return nil
		case map[string]interface{}:
			if items, ok := doc["items"].([]interface{}); ok && doc["kind"] == "List" {
				return unpack(items)
			}
			objects = append(objects, doc)
			return nil
		default:
			return fmt.Errorf("%s: a document is neither an object nor a list: %T", name, v)
		}
	}
	for {
		var doc interface{}
		err := decoder.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return objects, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if err := unpack(doc); err != nil {
			return nil, err
		}
	}
}

// as converts a decoded object to its typed form.
func as(obj map[string]interface{}, typed interface{}) error {
	raw, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, typed)
}

// pods returns the pod template an object creates pods from, if it has one.
func pods(obj map[string]interface{}) ([]podOf, error) {
	kind, _ := obj["kind"].(string)
	one := func(meta metav1.ObjectMeta, pod metav1.ObjectMeta, spec corev1.PodSpec) []podOf {
		return []podOf{{object: kind + "/" + meta.Namespace + "/" + meta.Name, namespace: meta.Namespace,
			meta: pod, spec: spec}}
	}
	switch kind {
	case "Pod":
		var o corev1.Pod
		err := as(obj, &o)
		return one(o.ObjectMeta, o.ObjectMeta, o.Spec), err
	case "PodTemplate":
		var o corev1.PodTemplate
		err := as(obj, &o)
		return one(o.ObjectMeta, o.Template.ObjectMeta, o.Template.Spec), err
	case "ReplicationController":
		var o corev1.ReplicationController
		if err := as(obj, &o); err != nil || o.Spec.Template == nil {
			return nil, err
		}
		return one(o.ObjectMeta, o.Spec.Template.ObjectMeta, o.Spec.Template.Spec), nil
	case "Deployment":
		var o appsv1.Deployment
		err := as(obj, &o)
		return one(o.ObjectMeta, o.Spec.Template.ObjectMeta, o.Spec.Template.Spec), err
	case "StatefulSet":
		var o appsv1.StatefulSet
		err := as(obj, &o)
		return one(o.ObjectMeta, o.Spec.Template.ObjectMeta, o.Spec.Template.Spec), err
	case "DaemonSet":
		var o appsv1.DaemonSet
		err := as(obj, &o)
		return one(o.ObjectMeta, o.Spec.Template.ObjectMeta, o.Spec.Template.Spec), err
	case "ReplicaSet":
		var o appsv1.ReplicaSet
		err := as(obj, &o)
		return one(o.ObjectMeta, o.Spec.Template.ObjectMeta, o.Spec.Template.Spec), err
	case "Job":
		var o batchv1.Job
		err := as(obj, &o)
		return one(o.ObjectMeta, o.Spec.Template.ObjectMeta, o.Spec.Template.Spec), err
	case "CronJob":
		var o batchv1.CronJob
		err := as(obj, &o)
		t := o.Spec.JobTemplate.Spec.Template
		return one(o.ObjectMeta, t.ObjectMeta, t.Spec), err
	}
	return nil, nil
}

func main() {
	levelFlag := flag.String("level", "", "evaluate every pod at this level (default: its namespace's enforce label, else restricted)")
	versionFlag := flag.String("version", "latest", "the policy version with -level")
	flag.Parse()

	var override *api.LevelVersion
	if *levelFlag != "" {
		level, err := api.ParseLevel(*levelFlag)
		if err != nil {
			fail(err)
		}
		version, err := api.ParseVersion(*versionFlag)
		if err != nil {
			fail(err)
		}
		override = &api.LevelVersion{Level: level, Version: version}
	}

	var objects []map[string]interface{}
	if flag.NArg() == 0 {
		docs, err := documents(os.Stdin, "stdin")
		if err != nil {
			fail(err)
		}
		objects = docs
	}
	for _, path := range flag.Args() {
		f, err := os.Open(path)
		if err != nil {
			fail(err)
		}
		docs, err := documents(f, path)
		f.Close()
		if err != nil {
			fail(err)
		}
		objects = append(objects, docs...)
	}

	// The default for a namespace the inputs do not label: the strictest policy.
	strictest := api.LevelVersion{Level: api.LevelRestricted, Version: api.LatestVersion()}
	enforced := map[string]api.LevelVersion{}
	var found []podOf
	for _, obj := range objects {
		if obj["kind"] == "Namespace" {
			var ns corev1.Namespace
			if err := as(obj, &ns); err != nil {
				fail(err)
			}
			if _, labelled := ns.Labels[api.EnforceLevelLabel]; !labelled {
				continue
			}
			p, errs := api.PolicyToEvaluate(ns.Labels, api.Policy{Enforce: strictest})
			if len(errs) > 0 {
				fail(fmt.Errorf("namespace %s: %v", ns.Name, errs.ToAggregate()))
			}
			enforced[ns.Name] = p.Enforce
			continue
		}
		more, err := pods(obj)
		if err != nil {
			fail(fmt.Errorf("%v %v: %w", obj["kind"], obj["metadata"], err))
		}
		found = append(found, more...)
	}
	sort.SliceStable(found, func(i, j int) bool { return found[i].object < found[j].object })

	evaluator, err := policy.NewEvaluator(identified(policy.DefaultChecks()), nil)
	if err != nil {
		fail(err)
	}
	stdout, stderr := json.NewEncoder(os.Stdout), json.NewEncoder(os.Stderr)
	total := 0
	for _, pod := range found {
		lv, ok := enforced[pod.namespace]
		if !ok {
			lv = strictest
		}
		if override != nil {
			lv = *override
		}
		fired = fired[:0]
		results := evaluator.EvaluatePod(lv, &pod.meta, &pod.spec)
		if len(results) != len(fired) {
			fail(fmt.Errorf("%s: %d results from %d checks", pod.object, len(results), len(fired)))
		}
		count := 0
		for i, result := range results {
			if result.Allowed {
				continue
			}
			count++
			must(stdout.Encode(Violation{Object: pod.object, Namespace: pod.namespace, Level: string(lv.Level),
				Version: lv.Version.String(), Check: string(fired[i]), Reason: result.ForbiddenReason,
				Detail: result.ForbiddenDetail}))
		}
		must(stderr.Encode(Evaluated{Object: pod.object, Namespace: pod.namespace, Level: string(lv.Level),
			Version: lv.Version.String(), Violations: count}))
		total += count
	}
	if total > 0 {
		os.Exit(1)
	}
}

func must(err error) {
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "podsecurity:", err)
	os.Exit(2)
}
