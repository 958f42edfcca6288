package readme_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

var goBlock = regexp.MustCompile("(?s)```go\n(.*?)```")

// lines returns the non-blank lines of s without their indentation, with
// runs of spaces folded (gofmt aligns comments differently in a block
// that is indented one more level).
func lines(s string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if l = strings.Join(strings.Fields(l), " "); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// TestREADME: every line of every Go block of the README appears in
// snippets_test.go, in the block's order, so the README shows only code
// that compiles against the library's API. Import lines are checked
// against the file's imports (a block lists only the packages it adds).
func TestREADME(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("snippets_test.go")
	if err != nil {
		t.Fatal(err)
	}
	code := lines(string(src))
	blocks := goBlock.FindAllStringSubmatch(string(readme), -1)
	if len(blocks) < 7 {
		t.Fatalf("found %d Go blocks in README.md, want at least 7", len(blocks))
	}
	for i, b := range blocks {
		block := lines(b[1])
		if len(block) > 0 && block[0] == "import (" {
			end := 1
			for end < len(block) && block[end] != ")" {
				if !contains(code, block[end]) {
					t.Errorf("README block %d imports %q, which snippets_test.go does not", i+1, block[end])
				}
				end++
			}
			block = block[end+1:]
		}
		at := 0
		for _, l := range block {
			j := index(code[at:], l)
			if j < 0 {
				t.Errorf("README block %d: line %q is not in snippets_test.go (after line %d of its code)", i+1, l, at)
				break
			}
			at += j + 1
		}
	}
}

func index(s []string, l string) int {
	for i, x := range s {
		if x == l {
			return i
		}
	}
	return -1
}

func contains(s []string, l string) bool { return index(s, l) >= 0 }
