package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
pkg: github.com/steadfast-go/steadfast/broker/kafka
BenchmarkPublish/1KB/raw-2         	     100	  10000000 ns/op	     40000 msgs/s	  512 B/op	 3 allocs/op
BenchmarkPublish/1KB/steadfast-2   	     100	  11000000 ns/op	     36000 msgs/s	  900 B/op	 9 allocs/op
BenchmarkPublish/1KB/raw-2         	     100	  10000000 ns/op	     44000 msgs/s	  512 B/op	 3 allocs/op
BenchmarkPublish/1KB/steadfast-2   	     100	  11000000 ns/op	     38000 msgs/s	  900 B/op	 9 allocs/op
BenchmarkPublish/1KB/raw-2         	     100	  10000000 ns/op	     42000 msgs/s	  512 B/op	 3 allocs/op
BenchmarkPublish/1KB/steadfast-2   	     100	  12000000 ns/op	     37800 msgs/s	  900 B/op	 9 allocs/op
BenchmarkConsume/100B/raw-2        	     100	  10000000 ns/op	       100 msgs/s
BenchmarkConsume/100B/steadfast-2  	     100	  10000000 ns/op	        90 msgs/s
BenchmarkConsume/100B/raw-2        	     100	  10000000 ns/op	       300 msgs/s
BenchmarkConsume/100B/steadfast-2  	     100	  10000000 ns/op	       270 msgs/s
BenchmarkConsume/100B/raw-2        	     100	  10000000 ns/op	       310 msgs/s
BenchmarkConsume/100B/steadfast-2  	     100	  10000000 ns/op	       100 msgs/s
pkg: github.com/steadfast-go/steadfast/broker/rabbitmq
BenchmarkConfirm/raw-single-2      	     10	 100000000 ns/op	      2000 msgs/s
BenchmarkConfirm/raw-window-2      	     10	  20000000 ns/op	     10000 msgs/s
BenchmarkConfirm/steadfast-vs-raw-window-2 	     10	  21000000 ns/op	      9500 msgs/s
BenchmarkConfirm/steadfast-2       	     10	  25000000 ns/op	      8000 msgs/s
PASS
`

func TestTable(t *testing.T) {
	var out strings.Builder
	if err := run(strings.NewReader(sample), &out); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	row := func(name, unit string) []string {
		for _, l := range strings.Split(s, "\n") {
			f := strings.Fields(l)
			if len(f) > 1 && f[0] == name && f[1] == unit {
				return f
			}
		}
		t.Fatalf("no row %s %s in:\n%s", name, unit, s)
		return nil
	}
	for _, c := range []struct {
		name, unit string
		want       string
	}{
		// runs paired: median of 36000/40000, 38000/44000, 37800/42000
		{"Publish/1KB/steadfast", "msgs/s", "37800 raw 42000 0.90x 3"},
		// time: raw/variant, median of 10/11, 10/11, 10/12
		{"Publish/1KB/steadfast", "ns/op", "11000000 raw 10000000 0.91x 3"},
		// the load changed from run to run: the first run was slow for
		// both, the last for the variant alone. Pairing runs counts the
		// latter once; the ratio of the medians would be 100/300 = 0.33.
		{"Consume/100B/steadfast", "msgs/s", "100 raw 300 0.90x 3"},
		// the baseline the name asks for: 9500 / 10000
		{"Confirm/steadfast-vs-raw-window", "msgs/s", "9500 raw-window 10000 0.95x 1"},
		// a baseline has no ratio
		{"Publish/1KB/raw", "msgs/s", "42000 3"},
	} {
		if got := strings.Join(row(c.name, c.unit)[2:], " "); got != c.want {
			t.Errorf("%s %s: %q, want %q", c.name, c.unit, got, c.want)
		}
	}
	// a variant without -vs- gets a row for each baseline of its group
	var both []string
	for _, l := range strings.Split(s, "\n") {
		if f := strings.Fields(l); len(f) > 3 && f[0] == "Confirm/steadfast" && f[1] == "msgs/s" {
			both = append(both, strings.Join(f[2:], " "))
		}
	}
	if want := []string{"8000 raw-single 2000 4.00x 1", "8000 raw-window 10000 0.80x 1"}; strings.Join(both, "|") != strings.Join(want, "|") {
		t.Errorf("Confirm/steadfast rows %q, want %q", both, want)
	}
	if strings.Contains(s, "allocs/op") {
		t.Errorf("allocation metrics should be left out:\n%s", s)
	}
}

func TestNoInput(t *testing.T) {
	if err := run(strings.NewReader("PASS\n"), &strings.Builder{}); err == nil {
		t.Fatal("want an error when there are no results")
	}
}
