# Helpers the benchmark scripts share (sourced from the repository root).

# A free loopback UDP port.
port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Clock ticks per second, the unit of /proc's CPU times.
TICK=$(getconf CLK_TCK)
# The median and the min–max of the numbers on stdin, separated by spaces or lines.
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
range() { tr ' ' '\n' | grep -v '^$' | sort -n | awk 'NR==1 {lo=$1} {hi=$1} END {print lo "–" hi}'; }
