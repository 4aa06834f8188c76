// Package archtest states the import boundaries of the house and checks a
// package graph against them. Its test runs the check over this module's real
// graph (`go list -deps -json ./...`), so `go test ./...` (and .ci/run) fails
// when a boundary is crossed:
//
//   - a service (services/<name>, not platform) imports another service or
//     the gateway;
//   - the gateway imports anything of this module but the protos
//     (proto/...), services/platform/... and itself;
//   - services/platform imports a service or the gateway;
//   - inside a service, a layer imports a layer above it:
//     domain ← app ← adapters (grpcapi, store, events, ingest, adapters);
//   - a domain package reaches an adapter (NATS, SQL drivers, database/sql,
//     the outbox, sqldb, zap, the gRPC runtime, …). A domain may use only the
//     standard library (minus database/sql and net/http), golang.org/x, the
//     protobuf runtime and this module's protos, and the pure platform
//     packages in PureForDomain; those are trusted as they are (their own
//     imports are not followed), everything else is reported.
//
// cmd/... (the all-in-one) wires everything and is not constrained.
package archtest

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Package is the part of `go list -json` the check reads.
type Package struct {
	ImportPath string
	Standard   bool
	Imports    []string
}

// PureForDomain are this module's packages a domain may import (relative to
// the module path): typed errors, the event value type and pure helpers.
var PureForDomain = []string{
	"services/platform/errs",
	"services/platform/eventtype",
	"services/platform/ids",
	"services/platform/textfold",
}

// pureExternal are external import path prefixes a domain may use: pure
// code, and the protobuf runtime the protos need. google.golang.org/grpc/codes
// is a table of constants, not the RPC runtime.
var pureExternal = []string{
	"golang.org/x/",
	"google.golang.org/protobuf/",
	"google.golang.org/genproto/",
	"google.golang.org/grpc/codes",
}

// forbiddenStd are standard packages that are adapters.
var forbiddenStd = []string{"database/sql", "net/http", "net/rpc", "log/slog"}

// Layers of a service's internal packages, lowest first. A package may
// import a lower layer, never a higher one.
var layers = map[string]int{
	"domain":   0,
	"app":      1,
	"grpcapi":  2,
	"store":    2,
	"events":   2,
	"ingest":   2,
	"adapters": 2,
}

type kind int

const (
	other kind = iota
	service
	platform
	gateway
	protos
)

type place struct {
	kind    kind
	service string // for service: its name
	layer   string // for service: its internal layer ("" when not internal/<layer>)
}

func classify(module, path string) place {
	rel, ok := strings.CutPrefix(path, module+"/")
	if !ok {
		return place{kind: other}
	}
	parts := strings.Split(rel, "/")
	switch {
	case parts[0] == "gateway":
		return place{kind: gateway}
	case parts[0] == "proto":
		return place{kind: protos}
	case parts[0] == "services" && len(parts) > 1 && parts[1] == "platform":
		return place{kind: platform}
	case parts[0] == "services" && len(parts) > 1:
		p := place{kind: service, service: parts[1]}
		if len(parts) > 3 && parts[2] == "internal" {
			p.layer = parts[3]
		}
		return p
	}
	return place{kind: other}
}

// Check returns one line per boundary crossed in pkgs (this module's
// packages and their dependencies), sorted.
func Check(module string, pkgs []Package) []string {
	byPath := make(map[string]Package, len(pkgs))
	for _, p := range pkgs {
		byPath[p.ImportPath] = p
	}
	var out []string
	for _, p := range pkgs {
		from := classify(module, p.ImportPath)
		for _, imp := range p.Imports {
			if devSeed(module, p.ImportPath, imp) {
				continue
			}
			if why := crossing(module, from, imp); why != "" {
				out = append(out, fmt.Sprintf("%s imports %s: %s", p.ImportPath, imp, why))
			}
		}
		if from.kind == service && from.layer == "domain" {
			out = append(out, domainAdapters(module, p, byPath)...)
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// devSeed is the one allowed exception: the gateway binary's dev-only
// --seed-demo fills the demo practice through the preferences API with the
// demo practice system's package (a stand-in for a practice's PMS, not a
// clinicchat service with data of its own).
func devSeed(module, from, imp string) bool {
	return imp == module+"/services/demoprovider" && strings.HasPrefix(from, module+"/gateway/cmd/")
}

func crossing(module string, from place, imp string) string {
	to := classify(module, imp)
	switch from.kind {
	case service:
		if to.kind == service && to.service != from.service {
			return "a service imports another service (talk over gRPC or events)"
		}
		if to.kind == gateway {
			return "a service imports the gateway"
		}
		if to.kind == service && from.layer != "" && to.layer != "" {
			fl, fok := layers[from.layer]
			tl, tok := layers[to.layer]
			if fok && tok && tl > fl {
				return fmt.Sprintf("layer %s imports layer %s (domain ← app ← adapters)", from.layer, to.layer)
			}
		}
	case gateway:
		if to.kind == service || to.kind == other && strings.HasPrefix(imp, module+"/") {
			return "the gateway reaches services only over gRPC (it may import proto/... and services/platform/...)"
		}
	case platform:
		if to.kind == service || to.kind == gateway {
			return "platform imports a service or the gateway"
		}
	}
	return ""
}

// domainAdapters walks what a domain package reaches, not following the
// allowed packages, and reports each package outside the allowed set with the
// chain that reaches it.
func domainAdapters(module string, root Package, byPath map[string]Package) []string {
	var out []string
	seen := map[string]bool{root.ImportPath: true}
	type step struct {
		path  string
		chain []string
	}
	queue := []step{{root.ImportPath, nil}}
	for len(queue) > 0 {
		s := queue[0]
		queue = queue[1:]
		for _, imp := range byPath[s.path].Imports {
			if seen[imp] {
				continue
			}
			seen[imp] = true
			chain := append(slices.Clone(s.chain), imp)
			switch allowedInDomain(module, root.ImportPath, imp, byPath) {
			case allowed:
				continue // trusted: not followed
			case follow:
				queue = append(queue, step{imp, chain})
			case forbidden:
				out = append(out, fmt.Sprintf("%s reaches %s (via %s): a domain package imports no adapter",
					root.ImportPath, imp, strings.Join(chain, " → ")))
			}
		}
	}
	return out
}

type verdict int

const (
	allowed verdict = iota
	follow
	forbidden
)

func allowedInDomain(module, domain, imp string, byPath map[string]Package) verdict {
	if p, ok := byPath[imp]; ok && p.Standard || isStd(imp) {
		if slices.Contains(forbiddenStd, imp) {
			return forbidden
		}
		return allowed
	}
	for _, pre := range pureExternal {
		if strings.HasPrefix(imp, pre) || imp == strings.TrimSuffix(pre, "/") {
			return allowed
		}
	}
	rel, ok := strings.CutPrefix(imp, module+"/")
	if !ok {
		return forbidden
	}
	if strings.HasPrefix(rel, "proto/") || slices.Contains(PureForDomain, rel) {
		return allowed
	}
	// A domain's own sub-packages are domain code too: follow them.
	if strings.HasPrefix(imp, domain+"/") {
		return follow
	}
	return forbidden
}

// isStd reports whether path looks like a standard-library path (no dot in
// its first element), for graphs that do not say.
func isStd(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}
