package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/edgeproxy/edgeproxy/store"
)

// adminClient talks JSON to the server's admin socket.
type adminClient struct {
	sock string
	http *http.Client
}

func newAdminClient(dataDir string) *adminClient {
	sock := filepath.Join(dataDir, socketFile)
	return &adminClient{sock: sock, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}}
}

// errNoServer is the one-line answer when no server listens on the socket.
type errNoServer struct{ sock string }

func (e errNoServer) Error() string {
	return fmt.Sprintf("no edgeproxy server is running on this data dir (nothing listens on %s); start one with `edgeproxy serve`", e.sock)
}

// do sends a request and returns the response body, or the server's error.
func (c *adminClient) do(method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, "http://admin"+path, rd)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Op == "dial" {
			return nil, errNoServer{c.sock}
		}
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var e struct {
			Error string `json:"error"`
		}
		data, _ := io.ReadAll(resp.Body)
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("server answered %s", resp.Status)
		}
		return nil, errors.New(e.Error)
	}
	return resp, nil
}

// call sends a request and prints the JSON answer, indented.
func (c *adminClient) call(stdout io.Writer, method, path string, body any) error {
	resp, err := c.do(method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var out bytes.Buffer
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if err := json.Indent(&out, data, "", "  "); err != nil {
		return fmt.Errorf("server sent something that is not JSON: %w", err)
	}
	_, err = stdout.Write(out.Bytes())
	return err
}

// usageError is a mistake in the command line (exit 2); other errors exit 1.
type usageError struct{ error }

// runAdmin runs an admin command: args[0] is the noun, args[1] the verb
// (none for backup).
func runAdmin(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	name := args[0]
	rest := args[1:]
	if name != "backup" {
		if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
			fmt.Fprintf(stderr, "edgeproxy: %s needs a subcommand\n%s", name, usage)
			return 2
		}
		name, rest = name+" "+rest[0], rest[1:]
	}
	cmd, ok := adminCommands[name]
	if !ok {
		fmt.Fprintf(stderr, "edgeproxy: unknown command %q\n%s", name, usage)
		return 2
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	dataDir := fs.String("data-dir", "./data", "the server's data directory (holds admin.sock)")
	exec := cmd(fs)
	if err := parseFlags(fs, rest, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintf(stdout, "usage: edgeproxy %s [flags]\n", name)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "edgeproxy: %v\n", err)
		return 2
	}
	if err := exec(newAdminClient(*dataDir), stdout); err != nil {
		fmt.Fprintf(stderr, "edgeproxy: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

// An adminCommand declares its flags on fs and returns what runs once they
// are parsed.
type adminCommand func(fs *flag.FlagSet) func(c *adminClient, stdout io.Writer) error

// optionalInt is an integer flag that knows whether it was given.
type optionalInt struct {
	set bool
	n   int
}

func (o *optionalInt) String() string {
	if !o.set {
		return ""
	}
	return strconv.Itoa(o.n)
}

func (o *optionalInt) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("%q is not a whole number", s)
	}
	o.set, o.n = true, n
	return nil
}

func (o *optionalInt) ptr() *int {
	if !o.set {
		return nil
	}
	return &o.n
}

func required(flagName, value string) error {
	if value == "" {
		return usageError{fmt.Errorf("--%s is required", flagName)}
	}
	return nil
}

var adminCommands = map[string]adminCommand{
	"org create": func(fs *flag.FlagSet) func(*adminClient, io.Writer) error {
		name := fs.String("name", "", "organization name")
		var slug stringFlag
		fs.Var(&slug, "slug", "the organization's slug, unique: lower-case letters, digits and '-' (default: made from the name)")
		var max optionalInt
		fs.Var(&max, "max-proxy-records", "this organization's limit (default: the server's --max-proxy-records)")
		return func(c *adminClient, out io.Writer) error {
			if err := required("name", *name); err != nil {
				return err
			}
			return c.call(out, "POST", "/orgs", map[string]any{"name": *name, "slug": slug.ptr(), "max_proxy_records": max.ptr()})
		}
	},
	"org list": func(fs *flag.FlagSet) func(*adminClient, io.Writer) error {
		return func(c *adminClient, out io.Writer) error { return c.call(out, "GET", "/orgs", nil) }
	},
	"org update": func(fs *flag.FlagSet) func(*adminClient, io.Writer) error {
		id := fs.String("id", "", "organization id or slug")
		var name stringFlag
		fs.Var(&name, "name", "new name")
		var slug stringFlag
		fs.Var(&slug, "slug", "new slug (API paths that use the old one stop working)")
		var max optionalInt
		fs.Var(&max, "max-proxy-records", "new limit")
		return func(c *adminClient, out io.Writer) error {
			if err := required("id", *id); err != nil {
				return err
			}
			return c.call(out, "PATCH", "/orgs/"+url.PathEscape(*id), map[string]any{"name": name.ptr(), "slug": slug.ptr(), "max_proxy_records": max.ptr()})
		}
	},
	"user create": func(fs *flag.FlagSet) func(*adminClient, io.Writer) error {
		email := fs.String("email", "", "the user's email")
		return func(c *adminClient, out io.Writer) error {
			if err := required("email", *email); err != nil {
				return err
			}
			return c.call(out, "POST", "/users", map[string]any{"email": *email})
		}
	},
	"member add": func(fs *flag.FlagSet) func(*adminClient, io.Writer) error {
		org := fs.String("org", "", "organization id or slug")
		user := fs.Int64("user", 0, "user id")
		level := fs.String("level", "", "member, admin or owner")
		return func(c *adminClient, out io.Writer) error {
			if err := required("org", *org); err != nil {
				return err
			}
			if *user <= 0 {
				return usageError{errors.New("--user is required (a user id from `edgeproxy user create`)")}
			}
			if _, err := store.ParseLevel(*level); err != nil {
				return usageError{fmt.Errorf("--level: %v", err)}
			}
			return c.call(out, "POST", "/members", map[string]any{"org": *org, "user": *user, "level": *level})
		}
	},
	"member remove": func(fs *flag.FlagSet) func(*adminClient, io.Writer) error {
		org := fs.String("org", "", "organization id or slug")
		user := fs.Int64("user", 0, "user id")
		return func(c *adminClient, out io.Writer) error {
			if err := required("org", *org); err != nil {
				return err
			}
			if *user <= 0 {
				return usageError{errors.New("--user is required (a user id from `edgeproxy user create`)")}
			}
			return c.call(out, "DELETE", "/orgs/"+url.PathEscape(*org)+"/members/"+strconv.FormatInt(*user, 10), nil)
		}
	},
	"key create": func(fs *flag.FlagSet) func(*adminClient, io.Writer) error {
		user := fs.Int64("user", 0, "user id")
		scopes := fs.String("scopes", "*", "comma-separated scopes, e.g. organization:read,organization:write")
		orgs := fs.String("orgs", "", "comma-separated organization ids or slugs the key is limited to (default: all of the user's)")
		label := fs.String("label", "", "a name for the key")
		return func(c *adminClient, out io.Writer) error {
			if *user <= 0 {
				return usageError{errors.New("--user is required (a user id from `edgeproxy user create`)")}
			}
			return c.call(out, "POST", "/keys", map[string]any{
				"user": *user, "scopes": splitList(*scopes), "orgs": splitList(*orgs), "label": *label,
			})
		}
	},
	"key list": func(fs *flag.FlagSet) func(*adminClient, io.Writer) error {
		user := fs.Int64("user", 0, "only this user's keys")
		return func(c *adminClient, out io.Writer) error {
			path := "/keys"
			if *user != 0 {
				path += "?user=" + strconv.FormatInt(*user, 10)
			}
			return c.call(out, "GET", path, nil)
		}
	},
	"key revoke": func(fs *flag.FlagSet) func(*adminClient, io.Writer) error {
		id := fs.String("id", "", "key id")
		return func(c *adminClient, out io.Writer) error {
			if err := required("id", *id); err != nil {
				return err
			}
			return c.call(out, "POST", "/keys/"+url.PathEscape(*id)+"/revoke", nil)
		}
	},
	"records list": func(fs *flag.FlagSet) func(*adminClient, io.Writer) error {
		org := fs.String("org", "", "only this organization's records (id or slug)")
		status := fs.String("status", "", "only records in this status")
		return func(c *adminClient, out io.Writer) error {
			q := url.Values{}
			if *org != "" {
				q.Set("org", *org)
			}
			if *status != "" {
				q.Set("status", *status)
			}
			return c.call(out, "GET", "/records?"+q.Encode(), nil)
		}
	},
	"webhooks list": func(fs *flag.FlagSet) func(*adminClient, io.Writer) error {
		org := fs.String("org", "", "only this organization's webhooks")
		return func(c *adminClient, out io.Writer) error {
			q := url.Values{}
			if *org != "" {
				q.Set("org", *org)
			}
			return c.call(out, "GET", "/webhooks?"+q.Encode(), nil)
		}
	},
	"backup": func(fs *flag.FlagSet) func(*adminClient, io.Writer) error {
		outPath := fs.String("out", "", "file to write the copy to")
		return func(c *adminClient, out io.Writer) error {
			if err := required("out", *outPath); err != nil {
				return err
			}
			n, err := c.backup(*outPath)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "{\n  \"out\": %q,\n  \"bytes\": %d\n}\n", *outPath, n)
			return nil
		}
	},
}

// stringFlag is a string flag that knows whether it was given.
type stringFlag struct {
	set bool
	s   string
}

func (f *stringFlag) String() string { return f.s }
func (f *stringFlag) Set(s string) error {
	f.set, f.s = true, s
	return nil
}
func (f *stringFlag) ptr() *string {
	if !f.set {
		return nil
	}
	return &f.s
}

// backup streams the server's copy of the database into a temporary file
// next to outPath, checks it opens as a consistent store, and only then
// renames it to outPath: a failed backup never replaces a good one.
func (c *adminClient) backup(outPath string) (int64, error) {
	resp, err := c.do("GET", "/backup", nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	tmp, err := os.CreateTemp(filepath.Dir(outPath), "."+filepath.Base(outPath)+".*")
	if err != nil {
		return 0, fmt.Errorf("--out: %w", err)
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, resp.Body)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("writing backup: %w", err)
	}
	if n == 0 {
		// bbolt would open an empty file as a new, empty database.
		return 0, errors.New("the server sent an empty backup")
	}
	copyStore, err := store.Open(tmp.Name(), store.Options{})
	if err != nil {
		return 0, fmt.Errorf("backup does not open as a database: %w", err)
	}
	err = copyStore.Check()
	copyStore.Close()
	if err != nil {
		return 0, fmt.Errorf("backup failed its consistency check: %w", err)
	}
	if err := os.Rename(tmp.Name(), outPath); err != nil {
		return 0, fmt.Errorf("--out: %w", err)
	}
	return n, nil
}
