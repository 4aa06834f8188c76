package store

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/clinicchat/clinicchat/services/preferences/internal/domain"
)

// Synthetic patient names for the contract suite and the benchmark: common
// first and last names of several languages (with their accents), drawn with
// a Zipf-like skew so that a few names are very common, as in a real practice.
var (
	firstNames = strings.Fields(`María José Juan Ana Luis Carmen Carlos Laura Jorge Lucía Pedro Sofía Miguel Elena
		Javier Isabel Antonio Marta Manuel Paula Francisco Cristina David Raquel Daniel Pilar Pablo Teresa Alejandro Rosa
		Sergio Beatriz Fernando Silvia Rafael Patricia Andrés Mónica Diego Nuria Álvaro Inés Iván Irene Óscar Julia
		Rubén Sara Adrián Alba Hugo Noelia Jesús Andrea Ángel Claudia Ramón Eva Víctor Lorena Tomás Marina Joaquín Rocío
		John Mary James Patricia Robert Jennifer Michael Linda William Elizabeth Richard Barbara Joseph Susan Thomas Jessica
		Charles Sarah Christopher Karen Matthew Nancy Anthony Lisa Mark Betty Donald Margaret Steven Sandra Paul Ashley
		Andrew Kimberly Joshua Emily Kenneth Donna Kevin Michelle Brian Dorothy George Carol Timothy Amanda Ronald Melissa
		François Zoë Chloé Hélène Amélie Jérôme Gaëlle Noël Anaïs Céline Benoît Mathéo Léa Clément Océane Renée
		Jürgen Björn Søren Ærø Åsa Jörg Uwe Günther Käthe Mæve Siobhán Seán Niamh Bríd Eoin Oisín
		Mohammed Fatima Ahmed Aisha Omar Leila Yusuf Zainab Wei Mei Hiroshi Yuki Raj Priya Arjun Ananya Dmitri Olga`)
	lastNames = strings.Fields(`García Fernández González Rodríguez López Martínez Sánchez Pérez Gómez Martín Jiménez
		Ruiz Hernández Díaz Moreno Muñoz Álvarez Romero Alonso Gutiérrez Navarro Torres Domínguez Vázquez Ramos Gil
		Ramírez Serrano Blanco Molina Morales Suárez Ortega Delgado Castro Ortiz Rubio Marín Sanz Núñez Iglesias Medina
		Garrido Cortés Castillo Santos Lozano Guerrero Cano Prieto Méndez Cruz Calvo Gallego Vidal León Márquez Herrera
		Peña Flores Cabrera Campos Vega Fuentes Carrasco Diez Caballero Reyes Nieto Aguilar Pascual Santana Herrero
		Lorenzo Montero Hidalgo Giménez Ibáñez Ferrer Durán Santiago Benítez Mora Vicente Vargas Arias Carmona Crespo
		Román Pastor Soto Sáez Velasco Moya Soler Parra Esteban Bravo Gallardo Rojas Smith Johnson Williams Brown Jones
		Miller Davis Wilson Anderson Taylor Thomas Moore Jackson White Harris Thompson Clark Lewis Robinson Walker Young
		Allen King Wright Scott Hill Green Adams Baker Nelson Carter Mitchell Roberts Turner Phillips Campbell Parker Evans
		Edwards Collins Stewart Morris Murphy Cook Rogers Morgan Cooper Peterson Reed Bailey Bell Kelly Howard Ward Cox
		Richardson Wood Watson Brooks Bennett Gray James Hughes Price Sanders Myers Long Ross Foster O'Brien O'Connor
		McDonald MacLeod Dubois Lefèvre Moreau Laurent Bérénger Girard Rousseau Mercier Faure Müller Schmidt Schneider
		Fischer Weiß Schäfer Köhler Größ Jørgensen Østergaard Nielsen Kowalski Nowak Wiśniewski Dąbrowski Łukasik
		Nguyen Tran Le Pham Kim Lee Park Chen Wang Zhang Tanaka Suzuki Sato Patel Shah Singh Kumar Ivanov Petrov Rossi
		Russo Ferrari Esposito Bianchi Romano Colombo Costa Silva Santos Oliveira Souza Pereira Almeida Ribeiro`)
)

// zipf draws an index in [0, n) with weight 1/(i+1)^0.8.
type zipf struct{ cum []float64 }

func newZipf(n int) zipf {
	z := zipf{cum: make([]float64, n)}
	s := 0.0
	for i := range n {
		s += 1 / math.Pow(float64(i+1), 0.8)
		z.cum[i] = s
	}
	return z
}

func (z zipf) draw(r *rand.Rand) int {
	x := r.Float64() * z.cum[len(z.cum)-1]
	lo, hi := 0, len(z.cum)-1
	for lo < hi {
		mid := (lo + hi) / 2
		if z.cum[mid] < x {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// namer makes reproducible synthetic patients.
type namer struct {
	r           *rand.Rand
	first, last zipf
}

func newNamer(seed uint64) *namer {
	return &namer{r: rand.New(rand.NewPCG(seed, 7)), first: newZipf(len(firstNames)), last: newZipf(len(lastNames))}
}

// name returns a display name: one or two first names and one or two last
// names, sometimes hyphenated.
func (n *namer) name() string {
	parts := []string{firstNames[n.first.draw(n.r)]}
	if n.r.IntN(100) < 15 {
		parts = append(parts, firstNames[n.first.draw(n.r)])
	}
	last := lastNames[n.last.draw(n.r)]
	switch x := n.r.IntN(100); {
	case x < 20:
		last += " " + lastNames[n.last.draw(n.r)]
	case x < 25:
		last += "-" + lastNames[n.last.draw(n.r)]
	}
	return strings.Join(append(parts, last), " ")
}

// patient returns the i-th synthetic patient of practice: 70% have a portal
// account, and 60% of those opted in to chat.
func (n *namer) patient(practice string, i int) domain.Patient {
	portal := n.r.IntN(100) < 70
	dob := time.Date(1930, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, n.r.IntN(33000))
	return domain.Patient{
		Practice:         practice,
		ID:               fmt.Sprintf("p%06d", i),
		ExternalID:       fmt.Sprintf("ext-%06d", i),
		DisplayName:      n.name(),
		DateOfBirth:      dob.Format(time.DateOnly),
		HasPortalAccount: portal,
		ChatOptIn:        portal && n.r.IntN(100) < 60,
		UpdateTime:       time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
	}
}
