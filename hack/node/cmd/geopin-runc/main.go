// geopin-runc is the OCI runtime containerd's shim calls: runc, except that it first removes
// process.oomScoreAdj from the bundle's config.json. The kubelet asks for a negative score for
// sandboxes and some containers, and these VMs refuse a negative oom_score_adj even to root, so
// runc would fail every create. Every other invocation passes through unchanged.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

func main() {
	if bundle := bundleDir(os.Args[1:]); bundle != "" {
		if err := dropOOMScoreAdj(filepath.Join(bundle, "config.json")); err != nil {
			fmt.Fprintln(os.Stderr, "geopin-runc:", err)
			os.Exit(1)
		}
	}
	runc := os.Getenv("GEOPIN_RUNC")
	if runc == "" {
		found, err := exec.LookPath("runc")
		if err != nil {
			fmt.Fprintln(os.Stderr, "geopin-runc:", err)
			os.Exit(1)
		}
		runc = found
	}
	argv := append([]string{runc}, os.Args[1:]...)
	err := syscall.Exec(runc, argv, os.Environ())
	fmt.Fprintln(os.Stderr, "geopin-runc: exec", runc+":", err)
	os.Exit(1)
}

// bundleDir returns the value of --bundle/-b (runc create and runc run), or "".
func bundleDir(args []string) string {
	for i, arg := range args {
		for _, flag := range []string{"--bundle", "-bundle", "-b", "--b"} {
			if arg == flag && i+1 < len(args) {
				return args[i+1]
			}
			if value, ok := strings.CutPrefix(arg, flag+"="); ok {
				return value
			}
		}
	}
	return ""
}

func dropOOMScoreAdj(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var spec map[string]any
	decoder := json.NewDecoder(bytes.NewReader(data))
	// Keep numbers as written: rlimits and resource limits do not survive a float64.
	decoder.UseNumber()
	if err := decoder.Decode(&spec); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	process, ok := spec["process"].(map[string]any)
	if !ok {
		return nil
	}
	if _, present := process["oomScoreAdj"]; !present {
		return nil
	}
	delete(process, "oomScoreAdj")
	data, err = json.Marshal(spec)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}
