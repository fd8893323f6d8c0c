# Plot of the soak's samples (benches/soak.rs runs this at the end):
#   gnuplot -e "csv='target/soak/soak.csv'; png='target/soak/soak.png'" benches/soak-plot.gp
# Three panels over time: RSS (MiB), open descriptors, tunnels (each
# daemon's own count and the kernel's); server and agent in each.
set terminal pngcairo size 900,780 font ",9"
set output png
set datafile separator ","
set key autotitle columnhead top left horizontal
set grid
# Headroom above the data for the key.
set offsets 0, 0, graph 0.3, 0
set multiplot layout 3,1 title "websocks soak: server and pooled agent on loopback"
set lmargin 10
set ylabel "RSS (MiB)"
set yrange [0:*]
plot csv using 1:($2/1024) with lines lw 1.5 title "server", \
     csv using 1:($6/1024) with lines lw 1.5 title "agent"
set ylabel "open fds"
plot csv using 1:3 with lines lw 1.5 title "server", \
     csv using 1:7 with lines lw 1.5 title "agent"
set ylabel "tunnels"
set xlabel "seconds since the load started"
plot csv using 1:14 with lines lw 1.5 title "server (its STATUS=)", \
     csv using 1:15 with lines lw 1.5 title "agent (its STATUS=)", \
     csv using 1:5 with lines lw 1 dt 2 title "server (sockets on its port)", \
     csv using 1:9 with lines lw 1 dt 2 title "agent (sockets on its port)", \
     csv using 1:10 with lines lw 1 lc rgb "gray50" title "churned tunnels closed/s"
unset multiplot
