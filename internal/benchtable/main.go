// Command benchtable turns `go test -bench` output into the table `make bench`
// prints: each figure beside its raw-client baseline from the same run.
//
// Convention: benchmarks that measure the same work are sub-benchmarks of one
// parent, and the baseline's last name element is "raw" or starts with "raw-"
// (e.g. BenchmarkPublish/1KB/raw and BenchmarkPublish/1KB/steadfast). When a
// group has several baselines, a variant is compared with each of them, one
// row per baseline, unless its name says which one
// (".../steadfast-vs-raw-window"). Throughput
// metrics (units ending in "/s") compare as variant/raw, time metrics as
// raw/variant, so a ratio above 1 always means the variant is faster. With
// several runs each figure is the median of the runs. When a variant and
// its baseline ran equally often, the ratio is the median of the ratios of
// their n-th runs: `make bench` runs every benchmark once per round, so the
// n-th runs are minutes apart at most, and pairing them keeps the load of a
// shared machine, which drifts over minutes, out of the ratio. Otherwise it
// is the ratio of the medians.
//
//	go test -run '^$' -bench . -count 5 ./... | go run ./internal/benchtable
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

// result holds every sample of every metric of one benchmark.
type result struct {
	pkg     string
	name    string // without the -N GOMAXPROCS suffix
	metrics map[string][]float64
	order   []string
}

var procSuffix = regexp.MustCompile(`-\d+$`)

func parse(r io.Reader) ([]*result, error) {
	var (
		pkg     string
		results []*result
		byKey   = map[string]*result{}
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "pkg: ") {
			pkg = strings.TrimPrefix(line, "pkg: ")
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		name := procSuffix.ReplaceAllString(f[0], "")
		key := pkg + " " + name
		res := byKey[key]
		if res == nil {
			res = &result{pkg: pkg, name: name, metrics: map[string][]float64{}}
			byKey[key] = res
			results = append(results, res)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			unit := f[i+1]
			if _, ok := res.metrics[unit]; !ok {
				res.order = append(res.order, unit)
			}
			res.metrics[unit] = append(res.metrics[unit], v)
		}
	}
	return results, sc.Err()
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func split(name string) (group, leaf string) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return name, ""
	}
	return name[:i], name[i+1:]
}

func isRaw(leaf string) bool { return leaf == "raw" || strings.HasPrefix(leaf, "raw-") }

// skipped metrics are not compared: allocation counts say nothing of speed.
var skipped = map[string]bool{"B/op": true, "allocs/op": true}

func run(in io.Reader, out io.Writer) error {
	results, err := parse(in)
	if err != nil {
		return err
	}
	if len(results) == 0 {
		return fmt.Errorf("no benchmark results on standard input")
	}
	raws := map[string][]*result{}
	for _, r := range results {
		g, leaf := split(r.name)
		if isRaw(leaf) {
			raws[r.pkg+" "+g] = append(raws[r.pkg+" "+g], r)
		}
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "benchmark\tmetric\tfigure\tbaseline\traw figure\tratio\truns")
	pkg := ""
	for _, r := range results {
		if r.pkg != pkg {
			pkg = r.pkg
			fmt.Fprintf(tw, "%s\t\t\t\t\t\t\n", pkg)
		}
		g, leaf := split(r.name)
		// A variant is compared with the baseline its name picks, or else
		// with every baseline of its group, one row each.
		var bases []*result
		if !isRaw(leaf) {
			cands := raws[r.pkg+" "+g]
			for _, c := range cands {
				if _, cl := split(c.name); strings.HasSuffix(leaf, "-vs-"+cl) {
					bases = []*result{c}
				}
			}
			if bases == nil {
				bases = cands
			}
		}
		if len(bases) == 0 {
			bases = []*result{nil}
		}
		for _, unit := range r.order {
			if skipped[unit] {
				continue
			}
			v := median(r.metrics[unit])
			for _, base := range bases {
				row := fmt.Sprintf("  %s\t%s\t%s", strings.TrimPrefix(r.name, "Benchmark"), unit, format(v))
				if base != nil && len(base.metrics[unit]) > 0 {
					bv := median(base.metrics[unit])
					_, bl := split(base.name)
					row += fmt.Sprintf("\t%s\t%s\t%.2fx", bl, format(bv), ratio(r.metrics[unit], base.metrics[unit], unit))
				} else {
					row += "\t\t\t"
				}
				row += fmt.Sprintf("\t%d", len(r.metrics[unit]))
				fmt.Fprintln(tw, row)
			}
		}
	}
	return tw.Flush()
}

// ratio compares variant samples with baseline samples of unit so that
// above 1 means faster: pairwise by run when both have as many runs, else
// by their medians.
func ratio(variant, base []float64, unit string) float64 {
	faster := func(v, b float64) float64 {
		if strings.HasSuffix(unit, "/s") {
			return v / b
		}
		return b / v
	}
	if len(variant) != len(base) {
		return faster(median(variant), median(base))
	}
	pairs := make([]float64, len(variant))
	for i := range variant {
		pairs[i] = faster(variant[i], base[i])
	}
	return median(pairs)
}

func format(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}
