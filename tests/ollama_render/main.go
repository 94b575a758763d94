// ollama_render: renders an Ollama Modelfile TEMPLATE the way Ollama's server does, as the outside
// referee for the templates `ft export --ollama` writes (tests/test_export_ollama.py).
//
// Reproduced from Ollama (github.com/ollama/ollama, MIT License, Copyright (c) Ollama), template/template.go
// at commit fb30760 (Aug 2026): Parse (missingkey=zero, the funcs map, {{ .Response }} appended to a
// template that names neither .Messages nor .Response), Vars, Execute (the .Messages path with the
// collated messages and the converted tools, and the legacy .System/.Prompt/.Response path that cuts
// the template at .Response), collate (all system messages joined into .System; consecutive messages
// of one role merged, tool messages never), deleteNode and the template-side message and tool types
// with their JSON String methods; and from server/routes.go the one step before it: a Modelfile SYSTEM
// becomes a first system message when the request has none. Only the Go standard library is used:
// api.Message / api.Tool are re-declared with the JSON fields Ollama reads, and ordered maps (Ollama's
// ToolPropertiesMap) are kept as raw JSON, which json.Marshal compacts in their given order.
//
// With -parse, it reads a Modelfile on stdin with Ollama's parser (parser/parser.go ParseFile, its
// state machine and unquote; the BOM decoding left out) and prints its commands as JSON.
//
// Input on stdin: {"template": T, "system": S, "messages": [...], "tools": [...]} (Ollama's /api/chat
// shapes), or a JSON array of those. Output: the rendered prompt, or for an array a JSON array of
// {"text": ...} / {"error": ...}.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// ---------------------------------------------------------------- api types (api/types.go)

type ToolCallFunction struct {
	Index     int            `json:"index"`
	Name      string         `json:"name"`
	Arguments map[string]any `json:"arguments"`
}

type ToolCall struct {
	ID       string           `json:"id,omitempty"`
	Function ToolCallFunction `json:"function"`
}

type Message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking,omitempty"`
	Images     []string   `json:"images,omitempty"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolName   string     `json:"tool_name,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

// PropertyType marshals as a string when it holds one type (api.PropertyType).
type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*pt = PropertyType{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*pt = many
	return nil
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

type ToolProperty struct {
	AnyOf       []ToolProperty  `json:"anyOf,omitempty"`
	Type        PropertyType    `json:"type,omitempty"`
	Items       any             `json:"items,omitempty"`
	Description string          `json:"description,omitempty"`
	Enum        []any           `json:"enum,omitempty"`
	Properties  json.RawMessage `json:"properties,omitempty"` // an ordered map in Ollama
	Required    []string        `json:"required,omitempty"`
}

type Tool struct {
	Type     string `json:"type"`
	Items    any    `json:"items,omitempty"`
	Function struct {
		Name        string `json:"name"`
		Description string `json:"description,omitempty"`
		Parameters  struct {
			Type       string                  `json:"type"`
			Defs       any                     `json:"$defs,omitempty"`
			Items      any                     `json:"items,omitempty"`
			Required   []string                `json:"required,omitempty"`
			Properties map[string]ToolProperty `json:"properties"`
		} `json:"parameters"`
	} `json:"function"`
}

// ---------------------------------------------------------------- template/template.go

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate": func(args ...string) string {
		return time.Now().Format("2006-01-02")
	},
	"yesterdayDate": func(args ...string) string {
		return time.Now().AddDate(0, 0, -1).Format("2006-01-02")
	},
	// Ollama's converts an api.ToolProperty to a TypeScript type; ft's templates do not call it.
	"toTypeScriptType": func(v any) string { return "any" },
}

var response = parse.ActionNode{
	NodeType: parse.NodeAction,
	Pipe: &parse.PipeNode{
		NodeType: parse.NodePipe,
		Cmds: []*parse.CommandNode{{
			NodeType: parse.NodeCommand,
			Args:     []parse.Node{&parse.FieldNode{NodeType: parse.NodeField, Ident: []string{"Response"}}},
		}},
	},
}

func parseTemplate(s string) (*template.Template, []string, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(s)
	if err != nil {
		return nil, nil, err
	}
	vars, err := templateVars(tmpl)
	if err != nil {
		return nil, nil, err
	}
	if !contains(vars, "messages") && !contains(vars, "response") {
		tmpl.Tree.Root.Nodes = append(tmpl.Tree.Root.Nodes, &response)
	}
	return tmpl, vars, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func templateVars(t *template.Template) ([]string, error) {
	var vars []string
	for _, tt := range t.Templates() {
		for _, n := range tt.Root.Nodes {
			v, err := identifiers(n)
			if err != nil {
				return vars, err
			}
			vars = append(vars, v...)
		}
	}
	set := map[string]bool{}
	for _, n := range vars {
		set[strings.ToLower(n)] = true
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

func identifiers(n parse.Node) ([]string, error) {
	switch n := n.(type) {
	case *parse.ListNode:
		var names []string
		for _, n := range n.Nodes {
			i, err := identifiers(n)
			if err != nil {
				return names, err
			}
			names = append(names, i...)
		}
		return names, nil
	case *parse.TemplateNode:
		if n.Pipe == nil {
			return nil, errors.New("undefined template specified")
		}
		return identifiers(n.Pipe)
	case *parse.ActionNode:
		if n.Pipe == nil {
			return nil, errors.New("undefined action in template")
		}
		return identifiers(n.Pipe)
	case *parse.BranchNode:
		if n.Pipe == nil {
			return nil, errors.New("undefined branch")
		}
		names, err := identifiers(n.Pipe)
		if err != nil {
			return names, err
		}
		for _, l := range []*parse.ListNode{n.List, n.ElseList} {
			if l != nil {
				i, err := identifiers(l)
				if err != nil {
					return names, err
				}
				names = append(names, i...)
			}
		}
		return names, nil
	case *parse.IfNode:
		return identifiers(&n.BranchNode)
	case *parse.RangeNode:
		return identifiers(&n.BranchNode)
	case *parse.WithNode:
		return identifiers(&n.BranchNode)
	case *parse.PipeNode:
		var names []string
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				i, err := identifiers(a)
				if err != nil {
					return names, err
				}
				names = append(names, i...)
			}
		}
		return names, nil
	case *parse.FieldNode:
		return n.Ident, nil
	case *parse.VariableNode:
		return n.Ident, nil
	}
	return nil, nil
}

type templateArgs map[string]any

func (t templateArgs) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateProperties map[string]ToolProperty

func (t templateProperties) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateToolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties templateProperties `json:"properties"`
}

type templateToolFunction struct {
	Name        string                         `json:"name"`
	Description string                         `json:"description"`
	Parameters  templateToolFunctionParameters `json:"parameters"`
}

type templateTool struct {
	Type     string               `json:"type"`
	Items    any                  `json:"items,omitempty"`
	Function templateToolFunction `json:"function"`
}

func (t templateTool) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type templateTools []templateTool

func (t templateTools) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type templateToolCallFunction struct {
	Index     int
	Name      string
	Arguments templateArgs
}

type templateToolCall struct {
	ID       string
	Function templateToolCallFunction
}

type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     []string
	ToolCalls  []templateToolCall
	ToolName   string
	ToolCallID string
}

func convertTools(tools []Tool) templateTools {
	if tools == nil {
		return nil
	}
	out := make(templateTools, len(tools))
	for i, tool := range tools {
		p := tool.Function.Parameters
		out[i] = templateTool{Type: tool.Type, Items: tool.Items, Function: templateToolFunction{
			Name: tool.Function.Name, Description: tool.Function.Description,
			Parameters: templateToolFunctionParameters{Type: p.Type, Defs: p.Defs, Items: p.Items, Required: p.Required, Properties: templateProperties(p.Properties)},
		}}
	}
	return out
}

func convertMessages(messages []*Message) []*templateMessage {
	if messages == nil {
		return nil
	}
	out := make([]*templateMessage, len(messages))
	for i, m := range messages {
		var calls []templateToolCall
		for _, tc := range m.ToolCalls {
			calls = append(calls, templateToolCall{ID: tc.ID, Function: templateToolCallFunction{Index: tc.Function.Index, Name: tc.Function.Name, Arguments: templateArgs(tc.Function.Arguments)}})
		}
		out[i] = &templateMessage{Role: m.Role, Content: m.Content, Thinking: m.Thinking, Images: m.Images, ToolCalls: calls, ToolName: m.ToolName, ToolCallID: m.ToolCallID}
	}
	return out
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func execute(tmpl *template.Template, vars []string, msgs []Message, tools []Tool) (string, error) {
	var w bytes.Buffer
	system, messages := collate(msgs)
	if contains(vars, "messages") {
		err := tmpl.Execute(&w, map[string]any{
			"System": system, "Messages": convertMessages(messages), "Tools": convertTools(tools),
			"Response": "", "Think": false, "ThinkLevel": "", "IsThinkSet": false,
		})
		return w.String(), err
	}
	// the legacy path: one execution per user/assistant pair, the last one cut at .Response
	system = ""
	var prompt, resp string
	run := func(t *template.Template) error {
		err := t.Execute(&w, map[string]any{"System": system, "Prompt": prompt, "Response": resp, "Think": false, "ThinkLevel": "", "IsThinkSet": false})
		system, prompt, resp = "", "", ""
		return err
	}
	for _, m := range messages {
		switch m.Role {
		case "system":
			if prompt != "" || resp != "" {
				if err := run(tmpl); err != nil {
					return "", err
				}
			}
			system = m.Content
		case "user":
			if resp != "" {
				if err := run(tmpl); err != nil {
					return "", err
				}
			}
			prompt = m.Content
		case "assistant":
			resp = m.Content
		}
	}
	var cut bool
	nodes := deleteNode(tmpl.Root.Copy(), func(n parse.Node) bool {
		if field, ok := n.(*parse.FieldNode); ok && contains(field.Ident, "Response") {
			cut = true
			return false
		}
		return cut
	})
	tree := parse.Tree{Root: nodes.(*parse.ListNode)}
	last := template.Must(template.New("").AddParseTree("", &tree))
	err := last.Execute(&w, map[string]any{"System": system, "Prompt": prompt, "Response": resp, "Think": false, "ThinkLevel": "", "IsThinkSet": false})
	return w.String(), err
}

func deleteNode(n parse.Node, fn func(parse.Node) bool) parse.Node {
	var walk func(n parse.Node) parse.Node
	walk = func(n parse.Node) parse.Node {
		if fn(n) {
			return nil
		}
		switch t := n.(type) {
		case *parse.ListNode:
			var nodes []parse.Node
			for _, c := range t.Nodes {
				if n := walk(c); n != nil {
					nodes = append(nodes, n)
				}
			}
			t.Nodes = nodes
			return t
		case *parse.IfNode:
			t.BranchNode = *walk(&t.BranchNode).(*parse.BranchNode)
		case *parse.WithNode:
			t.BranchNode = *walk(&t.BranchNode).(*parse.BranchNode)
		case *parse.RangeNode:
			t.BranchNode = *walk(&t.BranchNode).(*parse.BranchNode)
		case *parse.BranchNode:
			t.List = walk(t.List).(*parse.ListNode)
			if t.ElseList != nil {
				t.ElseList = walk(t.ElseList).(*parse.ListNode)
			}
		case *parse.ActionNode:
			n := walk(t.Pipe)
			if n == nil {
				return nil
			}
			t.Pipe = n.(*parse.PipeNode)
		case *parse.PipeNode:
			var commands []*parse.CommandNode
			for _, c := range t.Cmds {
				var args []parse.Node
				for _, a := range c.Args {
					if n := walk(a); n != nil {
						args = append(args, n)
					}
				}
				if len(args) == 0 {
					return nil
				}
				c.Args = args
				commands = append(commands, c)
			}
			if len(commands) == 0 {
				return nil
			}
			t.Cmds = commands
		}
		return n
	}
	return walk(n)
}

// ---------------------------------------------------------------- the request (server/routes.go ChatHandler)

type request struct {
	Template string    `json:"template"`
	System   string    `json:"system"` // the Modelfile's SYSTEM
	Messages []Message `json:"messages"`
	Tools    []Tool    `json:"tools"`
}

func render(r request) (string, error) {
	tmpl, vars, err := parseTemplate(r.Template)
	if err != nil {
		return "", err
	}
	msgs := r.Messages
	if len(msgs) > 0 && msgs[0].Role != "system" && r.System != "" {
		msgs = append([]Message{{Role: "system", Content: r.System}}, msgs...)
	}
	return execute(tmpl, vars, msgs, r.Tools)
}

// ---------------------------------------------------------------- parser/parser.go

type Command struct {
	Name string `json:"name"`
	Args string `json:"args"`
}

type state int

const (
	stateNil state = iota
	stateName
	stateValue
	stateParameter
	stateMessage
	stateComment
)

var errInvalidCommand = errors.New("command must be one of \"from\", \"license\", \"template\", \"system\", \"adapter\", \"draft\", \"renderer\", \"parser\", \"parameter\", \"message\", or \"requires\"")

func parseFile(br *bytes.Reader) ([]Command, error) {
	var cmd Command
	var curr state
	var b bytes.Buffer
	var role string
	var commands []Command
	for {
		r, _, err := br.ReadRune()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, err
		}
		next, r, err := parseRuneForState(r, curr)
		if err != nil {
			return nil, err
		}
		if next != curr {
			switch curr {
			case stateName:
				if !isValidCommand(b.String()) {
					return nil, errInvalidCommand
				}
				switch s := strings.ToLower(b.String()); s {
				case "from":
					cmd.Name = "model"
				case "parameter":
					next = stateParameter
				case "message":
					next = stateMessage
					fallthrough
				default:
					cmd.Name = s
				}
			case stateParameter:
				cmd.Name = b.String()
			case stateMessage:
				role = b.String()
			case stateValue:
				s, ok := unquote(strings.TrimSpace(b.String()))
				if !ok || isSpace(r) {
					b.WriteRune(r)
					continue
				}
				if role != "" {
					s = role + ": " + s
					role = ""
				}
				cmd.Args = s
				commands = append(commands, cmd)
			}
			b.Reset()
			curr = next
		}
		if strconv.IsPrint(r) {
			b.WriteRune(r)
		}
	}
	switch curr {
	case stateComment, stateNil:
	case stateValue:
		s, ok := unquote(strings.TrimSpace(b.String()))
		if !ok {
			return nil, io.ErrUnexpectedEOF
		}
		if role != "" {
			s = role + ": " + s
		}
		cmd.Args = s
		commands = append(commands, cmd)
	default:
		return nil, io.ErrUnexpectedEOF
	}
	return commands, nil
}

func parseRuneForState(r rune, cs state) (state, rune, error) {
	switch cs {
	case stateNil:
		switch {
		case r == '#':
			return stateComment, 0, nil
		case isSpace(r), isNewline(r):
			return stateNil, 0, nil
		default:
			return stateName, r, nil
		}
	case stateName:
		switch {
		case isAlpha(r):
			return stateName, r, nil
		case isSpace(r):
			return stateValue, 0, nil
		default:
			return stateNil, 0, errInvalidCommand
		}
	case stateValue:
		switch {
		case isNewline(r):
			return stateNil, r, nil
		case isSpace(r):
			return stateNil, r, nil
		default:
			return stateValue, r, nil
		}
	case stateParameter:
		switch {
		case isAlpha(r), isNumber(r), r == '_':
			return stateParameter, r, nil
		case isSpace(r):
			return stateValue, 0, nil
		default:
			return stateNil, 0, io.ErrUnexpectedEOF
		}
	case stateMessage:
		switch {
		case isAlpha(r):
			return stateMessage, r, nil
		case isSpace(r):
			return stateValue, 0, nil
		default:
			return stateNil, 0, io.ErrUnexpectedEOF
		}
	case stateComment:
		switch {
		case isNewline(r):
			return stateNil, 0, nil
		default:
			return stateComment, 0, nil
		}
	default:
		return stateNil, 0, errors.New("")
	}
}

func unquote(s string) (string, bool) {
	if len(s) >= 3 && s[:3] == `"""` {
		if len(s) >= 6 && s[len(s)-3:] == `"""` {
			return s[3 : len(s)-3], true
		}
		return "", false
	}
	if len(s) >= 1 && s[0] == '"' {
		if len(s) >= 2 && s[len(s)-1] == '"' {
			return s[1 : len(s)-1], true
		}
		return "", false
	}
	return s, true
}

func isAlpha(r rune) bool   { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }
func isNumber(r rune) bool  { return r >= '0' && r <= '9' }
func isSpace(r rune) bool   { return r == ' ' || r == '\t' }
func isNewline(r rune) bool { return r == '\r' || r == '\n' }

func isValidCommand(cmd string) bool {
	switch strings.ToLower(cmd) {
	case "from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message", "requires":
		return true
	}
	return false
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if len(os.Args) > 1 && os.Args[1] == "-parse" {
		commands, err := parseFile(bytes.NewReader(data))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetEscapeHTML(false)
		enc.Encode(commands)
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if trimmed := bytes.TrimSpace(data); len(trimmed) > 0 && trimmed[0] == '[' {
		var batch []request
		if err := json.Unmarshal(trimmed, &batch); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		out := make([]map[string]string, len(batch))
		for i, r := range batch {
			if text, err := render(r); err != nil {
				out[i] = map[string]string{"error": err.Error()}
			} else {
				out[i] = map[string]string{"text": text}
			}
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(out); err != nil {
			os.Exit(1)
		}
		return
	}
	var r request
	if err := json.Unmarshal(data, &r); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	text, err := render(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Stdout.WriteString(text)
}
