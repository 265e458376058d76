// geopin-pod is the only process of the local images: the pod sandbox ("pause") image and the
// workload images pushed to the registry replicas. Without PORT it waits for SIGTERM or SIGINT;
// with PORT it also serves HTTP on $BIND_ADDRESS:$PORT (default 127.0.0.1: pods run with
// hostNetwork), answering every request with $MESSAGE. Static (CGO off): an image needs nothing
// but this file.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	if port := os.Getenv("PORT"); port != "" {
		address := os.Getenv("BIND_ADDRESS")
		if address == "" {
			address = "127.0.0.1"
		}
		listener, err := net.Listen("tcp", net.JoinHostPort(address, port))
		if err != nil {
			fmt.Fprintln(os.Stderr, "geopin-pod:", err)
			os.Exit(1)
		}
		message := os.Getenv("MESSAGE")
		go func() {
			err := http.Serve(listener, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				fmt.Fprintln(w, message)
			}))
			fmt.Fprintln(os.Stderr, "geopin-pod:", err)
			os.Exit(1)
		}()
		fmt.Println("geopin-pod: serving on", listener.Addr())
	}
	// As PID 1 of a container it inherits orphans: reap them, as the upstream pause does.
	go reap()
	sig := <-stop
	fmt.Println("geopin-pod: stopping on", sig)
}

func reap() {
	children := make(chan os.Signal, 1)
	signal.Notify(children, syscall.SIGCHLD)
	for range children {
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
