package saga

import (
	"fmt"
	"strings"
)

// Mermaid returns a Mermaid flowchart of the definition: the steps in
// order with their kinds, where each failure leads (the compensations, in
// reverse order, or parking after the pivot), and the final states. Paste
// it into any Mermaid renderer (GitHub renders ```mermaid blocks).
func (d *Definition[D]) Mermaid() string { return d.d.mermaid() }

func (d *definition) mermaid() string {
	var b strings.Builder
	fmt.Fprintf(&b, "---\ntitle: %s v%d\n---\nflowchart TD\n", mermaidText(d.name), d.version)
	b.WriteString("    start([start])\n    completed([completed])\n")
	hasComp, hasPark := false, false
	for i, s := range d.steps {
		label := mermaidText(s.name)
		how := "command"
		if s.local != nil {
			how = "local"
		}
		switch s.kind {
		case Pivot:
			fmt.Fprintf(&b, "    s%d{{\"%s<br/><i>pivot, %s</i>\"}}\n", i, label, how)
		case Retriable:
			fmt.Fprintf(&b, "    s%d[/\"%s<br/><i>retriable, %s</i>\"/]\n", i, label, how)
		default:
			fmt.Fprintf(&b, "    s%d[\"%s<br/><i>%s</i>\"]\n", i, label, how)
		}
		if s.hasCompensation() {
			how := "command"
			if s.compLocal != nil {
				how = "local"
			}
			fmt.Fprintf(&b, "    c%d[\"undo %s<br/><i>%s</i>\"]\n", i, label, how)
		}
	}
	// undoFrom names the node that compensation starting at step i
	// (inclusive) goes to first.
	undoFrom := func(i int) string {
		for ; i >= 0; i-- {
			if d.steps[i].hasCompensation() {
				return fmt.Sprintf("c%d", i)
			}
		}
		hasComp = true
		return "compensated"
	}
	b.WriteString("    start --> s0\n")
	for i, s := range d.steps {
		next := "completed"
		if i+1 < len(d.steps) {
			next = fmt.Sprintf("s%d", i+1)
		}
		fmt.Fprintf(&b, "    s%d --> %s\n", i, next)
		switch s.kind {
		case Retriable:
			fmt.Fprintf(&b, "    s%d -. \"fails past limit\" .-> parked\n", i)
			hasPark = true
		case Pivot:
			fmt.Fprintf(&b, "    s%d -. refused .-> %s\n", i, undoFrom(i-1))
			if s.send != nil {
				fmt.Fprintf(&b, "    s%d -. \"no reply\" .-> parked\n", i)
				hasPark = true
			}
		default:
			fmt.Fprintf(&b, "    s%d -. \"refused, cancelled\" .-> %s\n", i, undoFrom(i-1))
			if s.send != nil && s.hasCompensation() {
				fmt.Fprintf(&b, "    s%d -. \"no reply\" .-> c%d\n", i, i)
			}
		}
		if s.hasCompensation() {
			fmt.Fprintf(&b, "    c%d -.-> %s\n", i, undoFrom(i-1))
			fmt.Fprintf(&b, "    c%d -. \"fails past limit\" .-> parked\n", i)
			hasPark = true
		}
	}
	if hasComp || strings.Contains(b.String(), "-.-> compensated") {
		b.WriteString("    compensated([compensated])\n")
	}
	if hasPark {
		b.WriteString("    parked([parked])\n")
	}
	return b.String()
}

// mermaidText escapes text for a quoted Mermaid label.
func mermaidText(s string) string {
	return strings.NewReplacer(`"`, "#quot;", "<", "#lt;", ">", "#gt;", "\n", " ").Replace(s)
}
